"""The shared progress line: count, total, rate and time left, redrawn on a terminal, periodic in a log."""

import io

import pytest

from keras_caltech.progress import ProgressLine, format_duration, track


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_line_gives_count_total_percentage_rate_and_time_left():
    clock = FakeClock()
    progress = ProgressLine("scanning", 30_607, stream=io.StringIO(), clock=clock)
    clock.now += 10
    assert progress.text(5_000) == "scanning: 5,000/30,607 images (16%), 500 images/s, 0:51 left"
    clock.now += 3_590
    assert progress.text(30_607) == "scanning: 30,607/30,607 images (100%), 9 images/s, took 1:00:00"


def test_without_a_total_the_line_has_no_percentage_and_no_time_left():
    clock = FakeClock()
    progress = ProgressLine("writing the disk cache", unit="batches", stream=io.StringIO(), clock=clock)
    assert progress.text(0) == "writing the disk cache: 0 batches"
    clock.now += 2
    assert progress.text(40) == "writing the disk cache: 40 batches, 20 batches/s"


def test_a_log_gets_a_new_line_every_ten_seconds_and_a_final_one():
    clock, log = FakeClock(), io.StringIO()
    progress = ProgressLine("evaluating", 100, stream=log, clock=clock)
    for _ in range(100):
        clock.now += 0.25  # 25 s in all
        progress.advance()
    progress.finish()
    lines = log.getvalue().splitlines()
    assert [line.split(": ")[1].split(" ")[0] for line in lines] == ["40/100", "80/100", "100/100"]
    assert "\r" not in log.getvalue() and lines[-1].endswith("took 0:25")


def test_a_terminal_line_is_redrawn_in_place_and_padded_over_a_longer_one():
    clock, terminal = FakeClock(), Terminal()
    progress = ProgressLine("x", 10, stream=terminal, clock=clock)
    clock.now += 0.5
    progress.update(5)  # "x: 5/10 images (50%), 10 images/s, 0:00 left"
    first = terminal.getvalue()
    assert first.startswith("\r") and not first.endswith("\n")
    progress.finish(10)  # shorter than the first line: padded with spaces
    last = terminal.getvalue()[len(first):]
    assert last.startswith("\rx: 10/10 images (100%)") and last.endswith("\n") and len(last) - 2 >= len(first) - 1


def test_a_disabled_or_short_line_prints_nothing_in_a_log_and_a_second_finish_prints_nothing_more():
    clock, log = FakeClock(), io.StringIO()
    silent = ProgressLine("quiet", 3, enabled=False, stream=log, clock=clock)
    clock.now += 60
    silent.update(3)
    silent.finish()
    assert log.getvalue() == ""
    with ProgressLine("short", 3, stream=log, clock=clock) as progress:
        progress.finish(3)
    assert log.getvalue() == ""  # under ten seconds: a log gets no line at all
    terminal = Terminal()
    with ProgressLine("once", 3, stream=terminal, clock=clock) as progress:
        progress.finish(3)
    assert terminal.getvalue().count("\n") == 1


def megabytes(byte_count):
    return f"{byte_count / 1e6:,.1f}"


def test_amounts_can_read_in_other_units_such_as_megabytes_from_bytes():
    clock = FakeClock()
    progress = ProgressLine("caltech256", 1_183_000_000, unit="MB", format_amount=megabytes,
                            stream=io.StringIO(), clock=clock)
    clock.now += 10
    assert progress.text(52_000_000) == "caltech256: 52.0/1,183.0 MB (4%), 5.2 MB/s, 3:38 left"


def test_a_resumed_start_counts_toward_the_amount_done_but_not_toward_the_rate_or_time_left():
    clock = FakeClock()
    progress = ProgressLine("resuming", 1_000, start=600, stream=io.StringIO(), clock=clock)
    clock.now += 10
    assert progress.text() == "resuming: 600/1,000 images (60%)"  # nothing new yet: no rate
    progress.advance(200)  # counted on from the start
    # 200 new items in 10 s: 20/s and 200 left, not 80/s from counting the 600 kept ones.
    assert progress.text() == "resuming: 800/1,000 images (80%), 20 images/s, 0:10 left"


def test_a_log_gets_the_final_line_of_a_short_loop_when_asked_and_only_once():
    clock, log = FakeClock(), io.StringIO()
    with ProgressLine("downloading", 3, always_print_final=True, stream=log, clock=clock) as progress:
        clock.now += 1
        progress.update(3)  # under ten seconds: no periodic line
        progress.finish()
    assert log.getvalue() == "downloading: 3/3 images (100%), 3 images/s, took 0:01\n"
    quiet = ProgressLine("off", 3, always_print_final=True, enabled=False, stream=log, clock=clock)
    quiet.finish(3)
    assert log.getvalue().count("\n") == 1  # enabled=False still wins


def test_track_yields_every_item_and_counts_each_by_its_size():
    terminal = Terminal()
    batches = [[1, 2, 3], [4, 5], [6]]
    assert list(track(batches, "batches", total=6, size=len, stream=terminal, clock=FakeClock())) == batches
    assert terminal.getvalue() == "\rbatches: 6/6 images (100%), took 0:00\n"


def test_track_finishes_the_line_when_the_loop_is_left_early():
    terminal = Terminal()
    for item in track(range(10), "early", stream=terminal, clock=FakeClock()):
        if item == 3:
            break  # the generator is closed here, which finishes its line
    # An item counts once the loop's body is done with it: items 0-2.
    assert terminal.getvalue() == "\rearly: 3/10 images (30%)\n"


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (75, "1:15"), (3725, "1:02:05"), (59.6, "1:00")])
def test_durations_read_as_minutes_and_seconds_or_hours(seconds, text):
    assert format_duration(seconds) == text
