"""The scan cache is saved while a first scan decodes, so a stopped scan resumes, not restarts."""

import itertools
import json
import os
import time

import pytest

from keras_caltech.data import scan


def cached_files(cache_dir):
    """{relative path: [size, mtime_ns, reason]} as saved on disk in ``cache_dir``."""
    (cache_file,) = cache_dir.glob("scan-*.json")
    return json.loads(cache_file.read_text())["files"]


def verdicts_of(result):
    """{relative path: None if usable, else the reason} of every image file of a scan."""
    verdicts = {path: None for path, _ in result.files}
    verdicts.update(result.excluded)
    return verdicts


def relative_paths(root, paths):
    return sorted(os.path.relpath(path, root) for path in paths)


def test_an_interrupted_first_scan_keeps_what_it_checked_and_the_next_scan_checks_only_the_rest(
        messy_dataset, tmp_path, monkeypatch):
    root, _, _ = messy_dataset
    reference = scan.scan_dataset(root, progress=False)
    original = scan.check_image
    finished = []

    def interrupted_after_twenty(path):  # Ctrl-C during the 21st file; later calls are cut short too
        if len(finished) >= 20:
            raise KeyboardInterrupt
        reason = original(path)
        finished.append(path)
        return reason

    monkeypatch.setattr(scan, "check_image", interrupted_after_twenty)
    with pytest.raises(KeyboardInterrupt):
        scan.scan_dataset(root, cache_dir=tmp_path / "cache", workers=1, progress=False)
    cached = cached_files(tmp_path / "cache")
    assert sorted(cached) == relative_paths(root, finished) and len(cached) == 20
    expected = verdicts_of(reference)
    for relative, (size, mtime_ns, reason) in cached.items():
        stat = os.stat(root / relative)
        assert [size, mtime_ns] == [stat.st_size, stat.st_mtime_ns] and reason == expected[relative]
    assert any(reason for _, _, reason in cached.values())  # broken files' reasons were kept too

    checked = []
    monkeypatch.setattr(scan, "check_image", lambda path: checked.append(path) or original(path))
    resumed = scan.scan_dataset(root, cache_dir=tmp_path / "cache", progress=False)
    all_images = [path for path in expected if not path.endswith("RENAME2")]
    assert relative_paths(root, checked) == sorted(set(all_images) - set(cached))
    assert len(checked) == len(all_images) - 20 > 0
    assert resumed == reference


def test_an_interrupt_with_several_workers_caches_exactly_the_checks_that_finished_and_starts_no_more(
        tiny_dataset, tmp_path, monkeypatch):
    total = len(scan.scan_dataset(tiny_dataset, progress=False).files)
    original = scan.check_image
    calls, started, finished, interrupted = itertools.count(1), [], [], []

    def interrupted_at_the_tenth_call(path):
        started.append(path)
        number = next(calls)
        if number == 10:
            interrupted.append(path)
            raise KeyboardInterrupt
        if number > 10:
            time.sleep(0.2)  # a slow disk: the rest of the tree must be dropped, not decoded
        reason = original(path)
        finished.append(path)
        return reason

    monkeypatch.setattr(scan, "check_image", interrupted_at_the_tenth_call)
    with pytest.raises(KeyboardInterrupt):
        scan.scan_dataset(tiny_dataset, cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert len(started) < total  # the files not yet started were cancelled
    cached = cached_files(tmp_path / "cache")
    assert sorted(cached) == relative_paths(tiny_dataset, finished)  # every finished check, no more
    assert relative_paths(tiny_dataset, interrupted)[0] not in cached

    checked = []
    monkeypatch.setattr(scan, "check_image", lambda path: checked.append(path) or original(path))
    scan.scan_dataset(tiny_dataset, cache_dir=tmp_path / "cache", progress=False)
    assert len(checked) == total - len(cached)
    assert not set(relative_paths(tiny_dataset, checked)) & set(cached)


@pytest.mark.parametrize("interval, saves_during_the_scan", [(0.0, True), (3600.0, False)],
                         ids=["every-file", "end-only"])
def test_a_first_scan_saves_its_progress_every_interval_before_it_ends(
        messy_dataset, tmp_path, monkeypatch, interval, saves_during_the_scan):
    root, _, _ = messy_dataset
    monkeypatch.setattr(scan, "CACHE_SAVE_SECONDS", interval)
    saved_sizes = []  # entries on disk after each save: what a killed scan would leave behind
    original_save = scan._save_cache

    def save_and_measure(cache_file, root, cache):
        saved = original_save(cache_file, root, cache)
        saved_sizes.append(len(cached_files(cache_file.parent)))
        return saved

    monkeypatch.setattr(scan, "_save_cache", save_and_measure)
    result = scan.scan_dataset(root, cache_dir=tmp_path / "cache", workers=1, progress=False)
    images = len(result.files) + sum(1 for _, reason in result.excluded if "extension" not in reason)
    if saves_during_the_scan:
        assert saved_sizes == list(range(1, images + 1))
    else:
        assert saved_sizes == [images]


def test_a_cache_folder_that_cannot_be_written_warns_once_however_often_the_scan_saves(
        messy_dataset, tmp_path, monkeypatch, capsys):
    root, _, _ = messy_dataset
    monkeypatch.setattr(scan, "CACHE_SAVE_SECONDS", 0.0)
    (tmp_path / "a_file").write_text("x")
    result = scan.scan_dataset(root, cache_dir=tmp_path / "a_file" / "cache", progress=False)
    assert result == scan.scan_dataset(root, progress=False)
    assert capsys.readouterr().err.count("warning: cannot save the scan cache") == 1
