"""The localisation metrics (pointing game, energy-based pointing game, localisation accuracy) and the ground-truth
boxes: hand computations on small maps, TorchRay's own pointing-game test on the same maps and points, the
project's localise + iou on the reference GAP CNN, the box readers, box scaling against the real preprocessing, the
registry, and every bad input as a typed error.

The maps are checked against a tiny hand-built GAP classifier (tests/tiny_models.py): these metrics read maps and
boxes; the model only gives the top-1 classes.
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz import metrics
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.image import Preprocessing, preprocess
from onnx_cnnviz.metrics import pointing as loc
from onnx_cnnviz.metrics import registry
from onnx_cnnviz.metrics.boxes import (Box, boxes_for_images, check_inside, images_without_boxes, lookup, read_boxes,
                                       to_input)

from ..conftest import REPO, load_script
from ..tiny_models import gap_classifier

S = 48  # image side: room for a peak 16 px away from a box


@pytest.fixture(scope="module")
def tiny():
    """(Model, x (2, 3, 48, 48), top-1 classes) of the tiny GAP classifier."""
    m = cv.load(gap_classifier(S, seed=1), device="cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, S, S)).astype(np.float32)
    return m, x, m.scores(x).argmax(1)


def _peak_map(points, n=2, base=0.1):
    """(n, S, S) maps of ``base`` with a 1.0 at ``points[i]`` = (x, y) of image i."""
    maps = np.full((n, S, S), base, np.float32)
    for i, (u, v) in enumerate(points):
        maps[i, v, u] = 1.0
    return maps


BOX = (10, 12, 20, 22)  # x0, y0, x1, y1: the last pixel inside is (19, 21)


# --- pointing game by hand ------------------------------------------------------------------------------------------
LOW = (10, 26, 20, 36)  # the box 14 px lower, for peaks above it


@pytest.mark.parametrize("box, point, hit", [
    (BOX, (19 + 14, 15), 1.0),      # 14 px right of the box's last column: inside the 15 px tolerance
    (BOX, (19 + 16, 15), 0.0),      # 16 px: outside
    (BOX, (19 + 15, 15), 0.0),      # exactly 15 px: TorchRay's test is strict, d^2 < 15^2
    (BOX, (19 + 9, 21 + 11), 1.0),  # diagonal from the corner: sqrt(81 + 121) = 14.2
    (BOX, (19 + 9, 21 + 12), 0.0),  # sqrt(81 + 144) = 15
    (LOW, (15, 26 - 14), 1.0),      # above the box, 14 px
    (LOW, (15, 26 - 16), 0.0),      # 16 px
    (BOX, (10, 12), 1.0),           # inside, at the first pixel
])
def test_pointing_game_tolerance_by_hand(tiny, box, point, hit):
    m, x, _ = tiny
    u, v = point
    maps = _peak_map([(u, v), (15, 15)])
    result = metrics.pointing_game(m, x, maps, boxes=[[box], [BOX]])
    assert result.values.tolist() == [hit, 1.0]
    assert tuple(result.details["point"][0]) == (u, v) and result.details["ties"].tolist() == [1, 1]
    nearest = (min(max(u, box[0]), box[2] - 1), min(max(v, box[1]), box[3] - 1))
    assert result.details["distance"][0] == pytest.approx(math.dist((u, v), nearest))
    assert result.metric == "pointing-game" and result.higher_is_better and result.output is None


def test_pointing_game_tolerance_is_a_parameter_and_zero_means_inside(tiny):
    m, x, _ = tiny
    maps = _peak_map([(19, 21), (20, 21)])  # the box's last pixel, and one pixel right of it
    boxes = [[BOX], [BOX]]
    assert metrics.pointing_game(m, x, maps, boxes=boxes, tolerance=0).values.tolist() == [1.0, 0.0]
    assert metrics.pointing_game(m, x, maps, boxes=boxes, tolerance=1).values.tolist() == [1.0, 0.0]
    assert metrics.pointing_game(m, x, maps, boxes=boxes, tolerance=1.5).values.tolist() == [1.0, 1.0]


def test_pointing_game_ties_take_the_first_maximum_in_raster_order(tiny):
    """Two equal maxima: the one earlier in raster order (smaller y, then smaller x) is the point, as torch.argmax."""
    m, x, _ = tiny
    maps = np.zeros((2, S, S), np.float32)
    maps[0, 15, 15] = maps[0, 45, 45] = 1.0  # inside first
    maps[1, 2, 40] = maps[1, 15, 15] = 1.0   # far outside first (row 2 before row 15)
    result = metrics.pointing_game(m, x, maps, boxes=[[BOX], [BOX]])
    assert result.values.tolist() == [1.0, 0.0]
    assert result.details["point"].tolist() == [[15, 15], [40, 2]] and result.details["ties"].tolist() == [2, 2]
    flat = metrics.pointing_game(m, x, np.ones((2, S, S), np.float32), boxes=[[BOX], [(0, 0, 2, 2)]])
    # a flat map points at (0, 0): sqrt(10^2 + 12^2) = 15.6 px from BOX, inside the second box
    assert flat.details["ties"].tolist() == [S * S] * 2 and flat.values.tolist() == [0.0, 1.0]


def test_pointing_game_against_torchray():
    """TorchRay's PointingGame.evaluate (the authors' protocol) on random smooth maps and boxes, with the point taken
    as TorchRay's benchmark takes it (argmax of the flattened map): the same hit for every case and tolerance."""
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchRay's importlib.resources.open_text
        pytest.importorskip("torchray")
        from torchray.benchmark.pointing_game import PointingGame

    import cv2

    rng = np.random.default_rng(3)
    n = 60
    coarse = rng.random((n, 6, 6)).astype(np.float32)
    maps = np.stack([cv2.resize(c, (S, S), interpolation=cv2.INTER_CUBIC) for c in coarse])
    m = cv.load(gap_classifier(S, seed=1), device="cpu")
    x = np.zeros((n, 3, S, S), np.float32)
    boxes = []
    for _ in range(n):
        k = int(rng.integers(1, 3))
        x0, y0 = rng.integers(0, S - 4, (2, k))
        x1, y1 = x0 + rng.integers(2, 20, k), y0 + rng.integers(2, 20, k)
        boxes.append([(a, b, min(c, S), min(d, S)) for a, b, c, d in zip(x0, y0, x1, y1)])
    compared, hits = 0, []
    for tolerance in (1, 5, 15):
        ours = metrics.pointing_game(m, x, maps, boxes=boxes, tolerance=tolerance)
        game = PointingGame(num_classes=1, tolerance=tolerance)
        for i in range(n):
            mask = torch.zeros((S, S), dtype=torch.bool)
            for a, b, c, d in boxes[i]:
                mask[b:d, a:c] = True
            index = int(torch.argmax(torch.from_numpy(maps[i]).reshape(-1)))
            point = (index % S, index // S)
            assert tuple(ours.details["point"][i]) == point
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchRay calls torch.meshgrid without indexing=
                theirs = game.evaluate(mask, point)
            assert ours.values[i] == (1.0 if theirs == 1 else 0.0), (tolerance, i)
            compared += 1
        hits.append(int(ours.values.sum()))
    assert compared == 3 * n
    assert 0 < hits[0] <= hits[1] <= hits[2] < n, hits  # both outcomes occur, more with a larger tolerance


# --- energy-based pointing game by hand ----------------------------------------------------------------------------
def test_energy_share_by_hand(tiny):
    m, x, _ = tiny
    maps = np.zeros((2, S, S), np.float32)
    maps[0, 12:22, 10:20] = 0.5        # 100 px inside: 50
    maps[0, 30:35, 30:40] = 1.0        # 50 px outside: 50
    maps[0, 0:5, 0:5] = -3.0           # negative evidence: no energy
    maps[1, 12:14, 10:12] = 2.0        # 4 px inside: 8
    maps[1, 40:44, 40:44] = 0.25       # 16 px outside: 4
    result = metrics.energy_pointing_game(m, x, maps, boxes=[[BOX], [BOX, (11, 13, 14, 16)]])
    np.testing.assert_allclose(result.values, [50 / 100, 8 / 12])
    np.testing.assert_allclose(result.details["energy"], [100, 12])
    # two overlapping boxes count their union once
    assert result.metric == "energy-pointing-game" and result.higher_is_better


def test_energy_of_a_map_without_positive_energy_is_zero_and_flagged(tiny):
    m, x, _ = tiny
    maps = np.zeros((2, S, S), np.float32)
    maps[1] = -1.0
    maps[0, 15, 15] = 1e-3
    result = metrics.energy_pointing_game(m, x, maps, boxes=[[BOX], [BOX]])
    assert result.values.tolist() == [1.0, 0.0] and result.details["no_energy"].tolist() == [False, True]


def test_energy_matches_the_score_cam_authors_formula_on_normalised_maps(tiny):
    """Score-CAM's utils/energyPointGame.py (with rows and columns the right way round): sum of the map in the box
    over the sum of the map, on a min-max normalised map (what the library's CAM maps are)."""
    m, x, _ = tiny
    raw = np.random.default_rng(5).random((2, S, S)).astype(np.float32)
    maps = (raw - raw.min((1, 2), keepdims=True)) / np.ptp(raw, (1, 2), keepdims=True)
    result = metrics.energy_pointing_game(m, x, maps, boxes=[[BOX], [(0, 0, 48, 10)]])
    for i, (x0, y0, x1, y1) in enumerate([BOX, (0, 0, 48, 10)]):
        assert result.values[i] == pytest.approx(maps[i, y0:y1, x0:x1].sum() / maps[i].sum(), rel=1e-6)


# --- localisation accuracy ------------------------------------------------------------------------------------------
def test_localisation_accuracy_by_hand(tiny):
    m, x, _ = tiny
    maps = np.zeros((2, S, S), np.float32)
    maps[0, 12:22, 10:20] = 1.0   # the box itself: IoU 1
    maps[0, 22:25, 10:20] = 0.15  # a faint band under it: below 20% of the max, above 10%
    maps[1, 12:22, 15:25] = 1.0   # shifted 5 px: IoU 50 / 150
    maps[1, 40:44, 40:44] = 0.9   # a smaller second region: not the largest component
    result = metrics.localisation_accuracy(m, x, maps, boxes=[[BOX], [BOX]])
    assert result.values.tolist() == [1.0, 0.0]
    np.testing.assert_allclose(result.details["iou"], [1.0, 50 / 150])
    assert result.details["box"].tolist() == [[10, 12, 20, 22], [15, 12, 25, 22]]
    assert result.details["top1"] is None  # unlabelled boxes: whether the class is right is unknown
    looser = metrics.localisation_accuracy(m, x, maps, boxes=[[BOX], [BOX]], iou_threshold=0.3)
    assert looser.values.tolist() == [1.0, 1.0]
    lower = metrics.localisation_accuracy(m, x, maps, boxes=[[BOX], [BOX]], threshold=0.1)
    assert lower.details["box"][0].tolist() == [10, 12, 20, 25]  # the band joins the region
    np.testing.assert_allclose(lower.details["iou"], [100 / 130, 50 / 150])


def test_labels_select_the_target_class_boxes_and_top1_needs_the_right_class(tiny):
    m, x, top1 = tiny
    other = (int(top1[0]) + 1) % 5
    maps = np.zeros((2, S, S), np.float32)
    maps[:, 12:22, 10:20] = 1.0
    boxes = [[Box(*BOX, label=int(top1[0])), Box(30, 30, 40, 40, label=other)],
             [Box(*BOX, label=other)]]
    # targets None: each image's top-1 class; image 1's boxes are of another class
    result = metrics.localisation(m, x, maps, boxes, variant="top-1")
    acc, pg = result["localisation-accuracy"], result["pointing-game"]
    assert acc.values.tolist() == [1.0, 0.0] and pg.values.tolist() == [1.0, 0.0]
    assert pg.details["class_in_image"].tolist() == [True, int(top1[1]) == other]
    # the same map explaining the other class: image 0's box of that class is elsewhere
    other_targets = [other, other]
    gt = metrics.localisation(m, x, maps, boxes, other_targets, variant="gt-known")
    assert gt["pointing-game"].values.tolist() == [0.0, 1.0]
    assert gt["localisation-accuracy"].values.tolist() == [0.0, 1.0]
    # top-1: the box is right for image 1, but the model's top-1 class is not `other`
    assert gt["localisation-accuracy"].details["top1"].tolist() == [0.0, float(int(top1[1]) == other)]
    assert np.array_equal(gt["localisation-accuracy"].targets, other_targets)


def test_attributions_are_reduced_per_pixel(tiny):
    m, x, _ = tiny
    attributions = np.zeros((2, 3, S, S), np.float32)
    attributions[:, 0, 15, 15] = -5.0  # strongest in |.|, negative
    attributions[:, 1, 40, 40] = 2.0
    boxes = [[BOX], [BOX]]
    assert metrics.pointing_game(m, x, attributions, boxes=boxes, channels="max-abs").values.tolist() == [1.0, 1.0]
    assert metrics.pointing_game(m, x, attributions, boxes=boxes, channels="sum").values.tolist() == [0.0, 0.0]
    energy = metrics.energy_pointing_game(m, x, attributions, boxes=boxes, channels="abs-sum")
    np.testing.assert_allclose(energy.values, [5 / 7, 5 / 7])


def test_one_entry_point_equals_the_three_metrics(tiny):
    m, x, _ = tiny
    maps = np.random.default_rng(1).random((2, S, S)).astype(np.float32)
    boxes = [[BOX], [(5, 5, 30, 40), (30, 0, 48, 10)]]
    together = metrics.localisation(m, x, maps, boxes, [0, 3], tolerance=4, threshold=0.5)
    assert list(together) == ["pointing-game", "energy-pointing-game", "localisation-accuracy"]
    alone = [metrics.pointing_game(m, x, maps, [0, 3], boxes=boxes, tolerance=4),
             metrics.energy_pointing_game(m, x, maps, [0, 3], boxes=boxes),
             metrics.localisation_accuracy(m, x, maps, [0, 3], boxes=boxes, threshold=0.5)]
    for result, single in zip(together.values(), alone):
        np.testing.assert_array_equal(result.values, single.values)
        assert result.targets.tolist() == [0, 3]
    seen = []
    metrics.localisation(m, x, maps, boxes, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (6, 6) and len(seen) == 6


def test_class_mean_is_torchrays_accuracy():
    result = metrics.MetricResult("pointing-game", np.array([1.0, 0.0, 0.0, 1.0]), np.array([0, 0, 0, 2]), True)
    assert loc.class_mean(result) == pytest.approx((1 / 3 + 1) / 2) and result.mean() == 0.5


# --- the registry ---------------------------------------------------------------------------------------------------
def test_registry_runs_the_localisation_metrics_with_boxes(tiny):
    m, x, _ = tiny
    maps = np.random.default_rng(2).random((2, S, S)).astype(np.float32)
    boxes = [[Box(*BOX)], [(5, 5, 30, 40)]]
    direct = metrics.localisation(m, x, maps, boxes, [1, 2])
    for name in ("pointing-game", "energy-pointing-game", "localisation-accuracy"):
        metric = registry.get(name)
        assert metric.needs_boxes and metric.takes == "maps" and metric.higher_is_better and metric.output is None
        via = registry.evaluate(name, m, x, maps, [1, 2], boxes=boxes)
        np.testing.assert_array_equal(via.values, direct[name].values)
        with pytest.raises(InputError, match=f"metric '{name}' needs ground-truth boxes \\(--boxes\\)"):
            registry.evaluate(name, m, x, maps, [1, 2])
    assert not registry.get("deletion").needs_boxes
    via = registry.evaluate("pointing-game", m, x, maps, [1, 2], params={"tolerance": 0}, boxes=boxes)
    np.testing.assert_array_equal(via.values, metrics.pointing_game(m, x, maps, [1, 2], boxes=boxes,
                                                                    tolerance=0).values)
    assert registry.parameters("localisation-accuracy") == {"threshold": 0.2, "iou_threshold": 0.5,
                                                            "variant": "gt-known", "channels": "sum"}


# --- the reference GAP CNN: the same boxes and hits as the project's localise ---------------------------------------
def test_localisation_accuracy_is_localise_and_iou_on_the_gap_cnn():
    """On 24 held-out shapes images, raw CAM maps (what ``localise(method="cam")`` thresholds) give the boxes
    ``localise`` draws and the hits ``benchmarks/localisation.py`` counts (GT-known and top-1)."""
    sd = load_script(REPO / "models" / "shapes_dataset.py")
    images, labels, gt = sd.make_dataset(24, sd.TEST_SEED)
    m = cv.load(REPO / "models" / "gap_cnn.onnx", device="cpu")
    x = preprocess(images, Preprocessing.from_metadata(m.metadata))
    maps = cv.cam(m, x, labels, normalize=False)
    boxes = [[Box(*b, label=int(c))] for b, c in zip(gt, labels)]
    result = metrics.localisation_accuracy(m, x, maps, labels, boxes=boxes, variant="top-1")
    ref = cv.localise(m, x, method="cam", targets=labels)
    ref_boxes = [r[0].box for r in ref]
    assert [tuple(b) for b in result.details["box"]] == ref_boxes
    ious = np.array([cv.iou(p, tuple(g)) for p, g in zip(ref_boxes, gt)])
    np.testing.assert_allclose(result.details["iou"], ious)
    correct = m.scores(x).argmax(1) == labels
    np.testing.assert_array_equal(result.details["gt_known"], ious >= 0.5)
    np.testing.assert_array_equal(result.values, (ious >= 0.5) & correct)
    assert 0 < result.values.sum() < len(x)


# --- boxes: reading -------------------------------------------------------------------------------------------------
def test_csv_and_json_round_trips(tmp_path):
    table = {"a.png": [Box(1, 2, 30, 40, 3), Box(5.5, 6, 7, 8.25, 0)], "dir/b.jpg": [Box(0, 0, 10, 10, None)]}
    rows = ["image,x0,y0,x1,y1,label"] + [f"{k},{b.x0:g},{b.y0:g},{b.x1:g},{b.y1:g},"
                                          + ("" if b.label is None else str(b.label))
                                          for k, bs in table.items() for b in bs]
    (tmp_path / "b.csv").write_text("\n".join(rows) + "\n")
    assert read_boxes(tmp_path / "b.csv") == table
    plain = {k: [[b.x0, b.y0, b.x1, b.y1] for b in bs] for k, bs in table.items()}
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    assert read_boxes(tmp_path / "plain.json") == {k: [Box(*b.coords) for b in bs] for k, bs in table.items()}
    labelled = {k: [{"box": list(b.coords), "label": b.label} for b in bs] for k, bs in table.items()}
    (tmp_path / "labelled.json").write_text(json.dumps(labelled))
    assert read_boxes(tmp_path / "labelled.json") == table
    # column order is free, extra columns and a BOM are ignored, the label column is optional
    (tmp_path / "c.csv").write_text("\ufeffy1,x0,image,note,y0,x1\n40,1,a.png,cat,2,30\n", encoding="utf-8")
    assert read_boxes(tmp_path / "c.csv") == {"a.png": [Box(1, 2, 30, 40)]}


BAD_FILES = [
    ("missing column", "b.csv", "image,x0,y0,x1\na.png,1,2,3\n", "missing column\\(s\\) y1; the header must be"),
    ("non-numeric", "b.csv", "image,x0,y0,x1,y1\na.png,1,two,3,4\n", "line 2: y0 is 'two', not a number"),
    ("empty cell", "b.csv", "image,x0,y0,x1,y1\na.png,1,,3,4\n", "line 2: y0 is '', not a number"),
    ("infinite", "b.csv", "image,x0,y0,x1,y1\na.png,1,2,inf,4\n", "line 2: x1 is 'inf', not a finite number"),
    ("x1 <= x0", "b.csv", "image,x0,y0,x1,y1\na.png,1,2,3,4\nb.png,5,2,5,4\n",
     "line 3: box \\(5, 2, 5, 4\\) is empty; boxes are half-open"),
    ("y1 <= y0", "b.csv", "image,x0,y0,x1,y1\na.png,1,9,3,4\n", "line 2: box \\(1, 9, 3, 4\\) is empty"),
    ("no image", "b.csv", "image,x0,y0,x1,y1\n,1,2,3,4\n", "line 2: the image column is empty"),
    ("bad label", "b.csv", "image,x0,y0,x1,y1,label\na.png,1,2,3,4,cat\n", "label is 'cat'; a label is a class"),
    ("negative label", "b.json", '{"a.png": [{"box": [1, 2, 3, 4], "label": -1}]}', "label is -1"),
    ("not json", "b.json", "{'a.png': []}", "is not valid JSON"),
    ("json list", "b.json", "[[1, 2, 3, 4]]", "the JSON must be an object"),
    ("json one box", "b.json", '{"a.png": [1, 2, 3, 4]}', "image 'a.png', box 0: a box is 4 numbers"),
    ("json no list", "b.json", '{"a.png": {"box": [1, 2, 3, 4]}}', "image 'a.png': give a list of boxes"),
    ("json no box key", "b.json", '{"a.png": [{"bbox": [1, 2, 3, 4]}]}', "box 0: an object entry needs a \"box\""),
    ("json text", "b.json", '{"a.png": [[1, 2, "x", 4]]}', "box 0: x1 is 'x', not a number"),
    ("json empty box", "b.json", '{"a.png": [[1, 2, 3, 4], [3, 2, 1, 4]]}', "box 1: box \\(3, 2, 1, 4\\) is empty"),
    ("suffix", "b.txt", "a.png 1 2 3 4", "unknown format '.txt'; give a .csv"),
]


@pytest.mark.parametrize("case, name, text, message", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_box_files_are_typed_errors(tmp_path, case, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=message) as err:
        read_boxes(tmp_path / name)
    assert "\n" not in str(err.value) and str(tmp_path / name) in str(err.value)


def test_unreadable_box_files(tmp_path):
    with pytest.raises(InputError, match="cannot read boxes file .*missing.csv: FileNotFoundError"):
        read_boxes(tmp_path / "missing.csv")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(InputError, match="cannot read boxes file .*dir.json: IsADirectoryError"):
        read_boxes(tmp_path / "dir.json")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81image")
    with pytest.raises(InputError, match="cannot read boxes file .*bin.csv: UnicodeDecodeError"):
        read_boxes(tmp_path / "bin.csv")


# --- boxes: matching a run's images, the image size, the resize -----------------------------------------------------
def test_lookup_by_path_normalised_path_or_file_name():
    table = {"photos/a.png": [Box(0, 0, 1, 1)], "b.png": [Box(0, 0, 2, 2)], "x/c.png": [Box(0, 0, 3, 3)],
             "y/c.png": [Box(0, 0, 4, 4)]}
    assert lookup(table, "photos/a.png") == [Box(0, 0, 1, 1)]
    assert lookup(table, "photos/./a.png") == [Box(0, 0, 1, 1)]
    assert lookup(table, "/data/run/b.png") == [Box(0, 0, 2, 2)]
    assert lookup(table, "x/c.png") == [Box(0, 0, 3, 3)]
    assert lookup(table, "d.png") == []
    with pytest.raises(InputError, match="names 2 images called 'c.png'"):
        lookup(table, "z/c.png")
    assert images_without_boxes(table, ["photos/a.png", "d.png", "e.png"]) == ["d.png", "e.png"]


def test_boxes_outside_the_image_and_images_without_boxes():
    table = {"a.png": [Box(0, 0, 10, 10), Box(50, 5, 101, 20)], "b.png": [Box(0, 0, 5, 5)]}
    with pytest.raises(InputError, match="image a.png, box 1 \\(50, 5, 101, 20\\) lies outside the image "
                                         "\\(100x40 pixels, width x height\\)"):
        boxes_for_images(table, ["a.png"], [(40, 100)], (64, 64))
    ok = boxes_for_images(table, ["a.png", "b.png"], [(40, 101), (5, 5)], None)
    assert ok == [table["a.png"], table["b.png"]]
    with pytest.raises(InputError, match="image c.png \\(and 1 more\\) has no ground-truth box"):
        boxes_for_images(table, ["a.png", "c.png", "d.png"], [(40, 101)] * 3)
    assert boxes_for_images(table, ["c.png"], [(40, 101)], require=False) == [[]]
    with pytest.raises(InputError, match="box 0 \\(-1, 0, 5, 5\\) lies outside"):
        check_inside([(-1, 0, 5, 5)], 10, 10, "q.png")
    with pytest.raises(InputError, match="2 images but 1 image sizes"):
        boxes_for_images(table, ["a.png", "b.png"], [(40, 101)])


def test_box_scaling_follows_the_real_preprocessing():
    """A rectangle drawn at a known box in a 100x40 picture, put through :func:`preprocess` to 64x64 (x shrinks by
    0.64, y grows by 1.6): the pixels more than half covered in the model input are exactly ``to_input``'s box."""
    picture = np.zeros((40, 100, 3), np.uint8)
    box = Box(23, 7, 71, 29)  # scaled: (14.72, 11.2, 45.44, 46.4) -> pixels (15, 11, 45, 46)
    picture[7:29, 23:71] = 255
    x = preprocess(picture, Preprocessing(size=(64, 64), mean=None, std=None))
    ys, xs = np.nonzero(x[0, 0] > 0.5)
    scaled = to_input([box], (40, 100), (64, 64), "p.png")[0]
    assert scaled.coords == pytest.approx((23 * 0.64, 7 * 1.6, 71 * 0.64, 29 * 1.6))
    assert scaled.pixels(64, 64) == (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) \
        == (15, 11, 45, 46)
    assert to_input([box], (40, 100), None) == [box]


def test_box_mapping_follows_a_centre_crop():
    """The same check under shorter side + centre crop (ImageNet evaluation, as the flagship records): a rectangle in
    a 60x120 picture, cropped to 64x64 with crop fraction 0.8 (scale 4/3 to 80x160, keep rows 8-72 and columns
    48-112): the pixels more than half covered in the model input are ``to_input``'s box with ``region=``; a box cut
    by the crop is clipped, one wholly outside is dropped, and an image left with no box is refused."""
    pre = Preprocessing(size=(64, 64), mean=None, std=None, resize="crop", crop_fraction=0.8)
    region = pre.input_region((60, 120))
    assert region == pytest.approx((6.0, 36.0, 48.0, 48.0))
    picture = np.zeros((60, 120, 3), np.uint8)
    box = Box(45, 15, 75, 42)  # -> ((45 - 36) * 4/3, (15 - 6) * 4/3, ...) = (12, 12, 52, 48)
    picture[15:42, 45:75] = 255
    x = preprocess(picture, pre)
    ys, xs = np.nonzero(x[0, 0] > 0.5)
    mapped = to_input([box], (60, 120), (64, 64), "p.png", region=region)[0]
    assert mapped.coords == pytest.approx((12.0, 12.0, 52.0, 48.0))
    assert mapped.pixels(64, 64) == (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    cut = to_input([Box(20, 0, 50, 20, 3), Box(0, 0, 30, 60), box], (60, 120), (64, 64), "p.png", region=region)
    assert [b.coords for b in cut] == [pytest.approx((0.0, 0.0, 56 / 3, 56 / 3)), pytest.approx(mapped.coords)]
    assert cut[0].label == 3
    with pytest.raises(InputError, match="outside the centre crop"):
        to_input([Box(0, 0, 30, 60)], (60, 120), (64, 64), "p.png", region=region)


def test_box_pixels_round_and_keep_one_pixel():
    assert Box(0.4, 0.6, 2.5, 3.49).pixels(10, 10) == (0, 1, 3, 3)
    assert Box(3.2, 3.3, 3.4, 3.45).pixels(10, 10) == (3, 3, 4, 4)  # thinner than a pixel: one pixel
    assert Box(9.7, 0, 9.9, 1).pixels(10, 10) == (9, 0, 10, 1)      # at the border: the last pixel
    assert Box(np.float32(1), np.int64(2), 3, 4, np.int64(7)) == Box(1.0, 2.0, 3.0, 4.0, 7)


# --- bad input: typed errors with a one-line cause ------------------------------------------------------------------
def _boxes2():
    return [[BOX], [BOX]]


BAD = [
    ("maps wrong size", {"maps": np.zeros((2, 8, 8), np.float32)}, "are 8x8, the images 48x48; upsample"),
    ("maps per image", {"maps": np.zeros((3, S, S), np.float32)}, "hold 3 maps for 2 images"),
    ("maps channels", {"maps": np.zeros((2, 2, S, S), np.float32)}, "have 2 channels"),
    ("maps NaN", {"maps": "nan"}, "image 1 contain NaN or Inf"),
    ("boxes missing", {"boxes": None}, "ground-truth boxes are required"),
    ("boxes per image", {"boxes": [[BOX]]}, "boxes hold 1 entries for 2 images"),
    ("empty box list", {"boxes": [[BOX], []]}, "image 1 has no ground-truth box"),
    ("outside", {"boxes": [[BOX], [(40, 40, 49, 45)]]},
     "image 1, box 0 \\(40, 40, 49, 45\\) lies outside the image \\(48x48 pixels"),
    ("negative", {"boxes": [[(-2, 0, 4, 4)], [BOX]]}, "image 0, box 0 \\(-2, 0, 4, 4\\) lies outside"),
    ("empty box", {"boxes": [[BOX], [(5, 5, 5, 9)]]}, "image 1, box 0: box \\(5, 5, 5, 9\\) is empty"),
    ("three numbers", {"boxes": [[BOX], [(1, 2, 3)]]}, "image 1, box 0 must be 4 numbers"),
    ("a box, not a list", {"boxes": [Box(*BOX), Box(*BOX)]}, "the boxes of image 0 must be a list of boxes"),
    ("text box", {"boxes": [[BOX], ["1234"]]}, "image 1, box 0 must be a Box or 4 numbers"),
    ("tolerance", {"tolerance": -1}, "tolerance must be a number >= 0"),
    ("threshold", {"threshold": 0}, "threshold must be a number in \\(0, 1\\]"),
    ("iou", {"iou_threshold": 1.5}, "iou_threshold must be a number in \\(0, 1\\]"),
    ("variant", {"variant": "top-5"}, "variant must be one of gt-known, top-1"),
    ("top-1 without labels", {"variant": "top-1"}, "top-1 localisation accuracy needs class labels"),
    ("channels", {"channels": "mean"}, "channels must be one of sum, abs-sum, max-abs"),
    ("target", {"targets": [0, 9]}, "target class 9 is out of range"),
]


@pytest.mark.parametrize("case, change, message", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_a_typed_error(tiny, case, change, message):
    m, x, _ = tiny
    args = {"maps": np.random.default_rng(0).random((2, S, S)).astype(np.float32), "boxes": _boxes2(),
            "targets": None}
    args.update(change)
    if isinstance(args["maps"], str):
        args["maps"] = np.random.default_rng(0).random((2, S, S)).astype(np.float32)
        args["maps"][1, 3, 3] = np.nan
    maps, boxes, targets = args.pop("maps"), args.pop("boxes"), args.pop("targets")
    with pytest.raises(InputError, match=message) as err:
        metrics.localisation(m, x, maps, boxes, targets, **args)
    assert "\n" not in str(err.value)
