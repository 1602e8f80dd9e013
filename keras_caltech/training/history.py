"""history.csv, the per-epoch metrics Keras' CSVLogger appends to: read back, cut and repaired on resume.

CSVLogger appends one row per epoch, so a stopped run's file may hold the row of an
epoch whose state was never saved (cut on resume, so the epoch is not listed twice), or
a row a failing disk garbled (bytes that are not UTF-8, a row cut short), which is
dropped with a warning: the file is a log, and losing a row must not stop a run.
"""

import csv
import pathlib

from keras_caltech.runs import replaced_atomically

HISTORY_FILE = "history.csv"


def history_value(path, epoch, column):
    """The number in ``column`` of 0-based ``epoch``'s row of history.csv, or None."""
    if not pathlib.Path(path).exists():
        return None
    header, rows, _ = _read_history(path)
    values = [float(row[header.index(column)]) for row in rows if int(row[0]) == epoch and column in header]
    return values[-1] if values else None


def _read_history(path):
    """(header, whole rows, number of damaged rows) of Keras' CSVLogger file.

    A whole row has the header's length and holds only numbers, the first one the 0-based
    epoch; anything else (bytes that are not UTF-8, a row cut short by a power failure) is damaged.
    """
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        lines = handle.read().replace("\0", "\ufffd").splitlines()
    if not lines:
        return [], [], 0
    header, *rows = [_parse_row(line) for line in lines]
    whole = [row for row in rows if len(row) == len(header) and _all_numbers(row)]
    return header, whole, len(rows) - len(whole)


def _parse_row(line):
    """One CSV line as a list of fields; [] for a line the csv module refuses (a huge garbled field)."""
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return []


def _all_numbers(row):
    try:
        [float(value) for value in row]
        return int(row[0]) >= 0
    except ValueError:
        return False


def truncate_history(path, epochs, log=print):
    """Keeps the whole rows of epochs 0..epochs-1 in Keras' CSVLogger file, dropping damaged rows."""
    path = pathlib.Path(path)
    if not path.exists():
        return
    header, rows, damaged = _read_history(path)
    if damaged:
        log(f"warning: dropped {damaged} damaged row(s) of {path}")
    rows = [row for row in rows if int(row[0]) < epochs]
    if not rows:
        path.unlink()  # CSVLogger starts a new file with its header
        return
    with replaced_atomically(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
