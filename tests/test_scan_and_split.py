import pytest

from keras_caltech.data import scan
from keras_caltech.data.splits import stratified_split
from keras_caltech.errors import UserError


def test_classes_are_sorted_and_background_classes_can_be_excluded(messy_dataset):
    root, _, _ = messy_dataset
    classes, not_found = scan.discover_classes(root)
    assert classes == ["001.circle", "002.ring", "257.clutter"]
    classes, not_found = scan.discover_classes(root, exclude=("257.clutter", "BACKGROUND_Google"))
    assert classes == ["001.circle", "002.ring"] and not_found == ["BACKGROUND_Google"]
    classes, _ = scan.discover_classes(root, exclude=("clutter",))  # name without its number
    assert classes == ["001.circle", "002.ring"]


def test_a_named_subset_of_classes_can_be_kept(messy_dataset):
    root, _, _ = messy_dataset
    assert scan.discover_classes(root, include=("circle", "257.clutter"))[0] == ["001.circle", "257.clutter"]
    with pytest.raises(UserError, match="unknown class.*circl"):
        scan.discover_classes(root, include=("circl",))


def test_scan_keeps_odd_but_valid_images_and_reports_every_broken_file(messy_dataset, tmp_path):
    root, usable, broken = messy_dataset
    result = scan.scan_dataset(root, exclude=("257.clutter",), cache_dir=tmp_path / "cache")
    kept = {path for path, _ in result.files if path.startswith("002.ring/")}
    assert kept == {f"002.ring/{name}" for name in usable} | {f"002.ring/002_{i:04d}.jpg" for i in range(1, 7)}
    excluded = dict(result.excluded)
    assert set(excluded) == {f"002.ring/{name}" for name in broken}
    assert "0 bytes" in excluded["002.ring/zero.jpg"]
    assert "extension" in excluded["002.ring/RENAME2"]
    assert "decoded" in excluded["002.ring/truncated.jpg"]


def test_a_second_scan_of_an_unchanged_tree_decodes_nothing(messy_dataset, tmp_path, monkeypatch):
    root, _, _ = messy_dataset
    first = scan.scan_dataset(root, cache_dir=tmp_path / "cache")
    decoded = []
    original = scan.check_image
    monkeypatch.setattr(scan, "check_image", lambda path: decoded.append(path) or original(path))
    second = scan.scan_dataset(root, cache_dir=tmp_path / "cache")
    assert decoded == [] and second == first
    (root / "001.circle" / "001_0001.jpg").write_bytes(b"")  # a changed file is rescanned
    third = scan.scan_dataset(root, cache_dir=tmp_path / "cache")
    assert [path.name for path in decoded] == ["001_0001.jpg"]
    assert "001.circle/001_0001.jpg" in dict(third.excluded)


@pytest.mark.parametrize("problem", ["missing", "file", "empty", "one_class", "no_images"])
def test_unusable_dataset_folders_get_a_clear_error(tmp_path, problem):
    root = tmp_path / "data"
    if problem == "file":
        root.write_text("not a folder")
    elif problem != "missing":
        root.mkdir()
    if problem == "one_class":
        (root / "001.only").mkdir()
    if problem == "no_images":
        for name in ("001.a", "002.b"):
            (root / name).mkdir()
            (root / name / "readme.txt").write_text("x")
    with pytest.raises(UserError) as error:
        scan.scan_dataset(root)
    assert str(root) in str(error.value)


def _files(counts):
    return [(f"{label:03d}/{index}.jpg", label) for label, count in enumerate(counts) for index in range(count)]


def test_split_is_stratified_disjoint_and_complete():
    files = _files([100, 40, 10])
    splits = stratified_split(files, ["a", "b", "c"], test_fraction=0.2, val_fraction=0.1, seed=3)
    for label, count in enumerate([100, 40, 10]):
        per_split = {name: sum(1 for _, lab in pairs if lab == label) for name, pairs in splits.items()}
        assert per_split["test"] == round(count * 0.2)
        assert per_split["val"] == max(1, round((count - round(count * 0.2)) * 0.1))
        assert sum(per_split.values()) == count
    all_paths = [path for pairs in splits.values() for path, _ in pairs]
    assert len(all_paths) == len(set(all_paths)) == 150


def test_split_depends_only_on_the_seed():
    files = _files([30, 30])
    first = stratified_split(files, ["a", "b"], seed=1)
    assert first == stratified_split(list(reversed(files)), ["a", "b"], seed=1)
    assert first != stratified_split(files, ["a", "b"], seed=2)


def test_n_training_images_per_class_protocol_tests_on_the_rest():
    splits = stratified_split(_files([50, 35]), ["a", "b"], train_per_class=30, val_fraction=0.0)
    assert [sum(1 for _, lab in splits["train"] if lab == label) for label in (0, 1)] == [30, 30]
    assert len(splits["test"]) == 20 + 5 and splits["val"] == []
    with pytest.raises(UserError, match="b \\(35 images\\)"):
        stratified_split(_files([50, 35]), ["a", "b"], train_per_class=40)


@pytest.mark.parametrize("protocol", [{"train_per_class": 30}, {"test_fraction": 0.5}])
def test_a_test_cap_keeps_at_most_n_test_images_per_class_and_leaves_the_training_split_alone(protocol):
    files, names = _files([50, 35]), ["a", "b"]
    uncapped = stratified_split(files, names, val_fraction=0.0, **protocol)
    capped = stratified_split(files, names, val_fraction=0.0, test_per_class=8, **protocol)
    assert capped["train"] == uncapped["train"]
    assert [sum(1 for _, lab in capped["test"] if lab == label) for label in (0, 1)] == [8, 5 if protocol.get(
        "train_per_class") else 8]
    assert set(capped["test"]) < set(uncapped["test"])  # a subset: the capped-off images are used by no split


def test_a_cache_folder_that_cannot_be_written_costs_a_rescan_not_the_scan(messy_dataset, tmp_path, capsys):
    root, _, _ = messy_dataset
    (tmp_path / "a_file").write_text("x")
    unwritable = tmp_path / "a_file" / "cache"  # a file as a parent: no one can create it, root included
    result = scan.scan_dataset(root, cache_dir=unwritable)
    assert result == scan.scan_dataset(root)  # the same verdicts as without a cache
    err = capsys.readouterr().err
    assert err.startswith("warning: cannot save the scan cache in") and "data.cache_dir" in err
    assert not unwritable.exists()


def test_the_train_val_protocol_selects_and_reports_on_one_held_out_split():
    files, names = _files([100, 40]), ["a", "b"]
    three_way = stratified_split(files, names, test_fraction=0.2, val_fraction=0.1, seed=3)
    reports = stratified_split(files, names, test_fraction=0.2, val_fraction=0.1, seed=3, protocol="train_val")
    assert reports["val"] == reports["test"] == three_way["test"]  # the same held-out images
    assert len(reports["train"]) == 80 + 32  # the whole 80%: no validation carved from it
    assert not set(reports["train"]) & set(reports["val"])
    assert sorted(reports["train"] + reports["val"]) == sorted(files)


@pytest.mark.parametrize("intruder", ["link_to_root", "link_above_root", "run_folder"])
def test_a_subfolder_that_is_not_a_class_is_refused_not_trained_on(intruder, tiny_dataset, tmp_path):
    import shutil

    root = shutil.copytree(tiny_dataset, tmp_path / "data")
    if intruder == "link_to_root":
        (root / "999.loop").symlink_to(root, target_is_directory=True)
        message = "links back to the dataset folder"
    elif intruder == "link_above_root":
        (root / "999.loop").symlink_to(tmp_path, target_is_directory=True)
        message = "links back to the dataset folder"
    else:
        (root / "runs-1").mkdir()
        (root / "runs-1" / "config.yaml").write_text("name: x\n")
        (root / "runs-1" / "splits.json").write_text("{}")
        message = "is a run folder of train.py, not a class"
    with pytest.raises(UserError, match=message):
        scan.scan_dataset(root)


def test_a_run_folder_inside_the_dataset_is_refused_before_it_is_made(tiny_dataset, tmp_path, capsys):
    import shutil

    import train

    root = shutil.copytree(tiny_dataset, tmp_path / "data")
    assert train.main(["--data", str(root), "--output-dir", str(root / "runs" / "a"), "--set", "train.epochs=1",
                       "--set", "data.cache_dir="]) == 2
    assert "would be inside the dataset folder" in capsys.readouterr().err
    assert not (root / "runs").exists()


# Scans a dataset folder; prints {"kept": [...], "excluded": {path: reason}}. Run under an
# address-space limit: a bomb the scan failed to refuse fails the test, not the machine.
SCAN_SCRIPT = r'''
import json, sys
from keras_caltech.data.scan import scan_dataset
result = scan_dataset(sys.argv[1], workers=2)
print(json.dumps({"kept": [path for path, _ in result.files], "excluded": dict(result.excluded)}))
'''


def test_the_scan_refuses_decompression_bombs_of_every_format_from_their_header(tiny_dataset, tmp_path):
    import json
    import os
    import shutil

    import image_bombs

    root = shutil.copytree(tiny_dataset, tmp_path / "data")
    folder = root / sorted(os.listdir(root))[0]
    bombs = {  # the decoder goes by the bytes, not the extension: a WebP named .jpg is read
        "webp.jpg": image_bombs.lossless_webp(16383, 16383),
        "canvas.jpg": image_bombs.extended_webp(8, 8, canvas=(16383, 16383)),
        "zeros.png": image_bombs.blank_png(20000, 20000),
        "screen.gif": image_bombs.gif([(8, 8)], declared={0: (12000, 12000)}),
        "thin.gif": image_bombs.gif([(20000, 1), (1, 20000)]),
        "frames.gif": image_bombs.gif([(8, 8), (8, 8)], declared={0: (7000, 7000), 1: (7000, 7000)}),
    }
    legal = {"small.jpg": image_bombs.lossless_webp(300, 200),
             "layers.gif": image_bombs.gif([(30, 20), (10, 40)], local_table=True)}
    for name, encoded in {**bombs, **legal, "xl.jpg": b"\xff\x0a" + bytes(30)}.items():
        (folder / name).write_bytes(encoded)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = image_bombs.run_limited(["-c", SCAN_SCRIPT, str(root)],
                                     env={**os.environ, "PYTHONPATH": repo, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    scanned = json.loads(result.stdout.strip().splitlines()[-1])
    excluded = {os.path.basename(path): reason for path, reason in scanned["excluded"].items()}
    assert set(excluded) == set(bombs) | {"xl.jpg"}
    assert all(excluded[name].startswith("too large (") for name in bombs), excluded
    assert "MAX_PIXELS in keras_caltech/data/pixel_limit.py" in excluded["thin.gif"]
    assert excluded["xl.jpg"].startswith("JPEG XL is refused")
    assert {f"{folder.name}/{name}" for name in legal} <= set(scanned["kept"])


def test_header_size_reads_every_format_tensorflow_decodes_and_gives_none_for_a_refused_image():
    import image_bombs
    import tensorflow as tf

    assert scan.header_size(tf.constant(image_bombs.lossless_webp(300, 200))) == (300, 200)
    assert scan.header_size(tf.constant(image_bombs.gif([(30, 2), (3, 20)]))) == (30, 20)
    assert scan.header_size(tf.constant(image_bombs.gif([(20000, 1), (1, 20000)]))) is None
    assert scan.header_size(tf.constant(b"not an image")) is None
