"""Turn a published dataset's own layout into the folder-per-class tree training reads.

Tiny ImageNet keeps its validation labels in a text file and CIFAR-100 ships Python
pickles, so neither archive extracts to ``<root>/<class>/<image>``. A converter takes
the extracted archive and builds that tree. :func:`keras_caltech.data.download.download_dataset`
runs it inside the dataset's ``<name>.extracting/`` folder, before the completion marker
and the atomic rename, so an interrupted conversion never leaves a half-converted
dataset folder: the next call starts it over.

The archive's md5 has matched by then, but a name read from inside it still becomes a
path only if it is one plain file or folder name, and the CIFAR pickles are read by an
unpickler that can build numpy arrays and nothing else (a pickle can otherwise run any
function it names). Every refusal is a :class:`~keras_caltech.errors.UserError` naming
the file and the value. A failed write (a full disk) stays an ``OSError``: the caller
reports it with the space needed and keeps the verified archive for a rerun.
"""

import os
import pickle

import cv2
import numpy as np

from keras_caltech.errors import UserError

CIFAR_IMAGE_SIZE = 32
_CIFAR_ROW_LENGTH = 3 * CIFAR_IMAGE_SIZE * CIFAR_IMAGE_SIZE  # R plane, G plane, B plane
# The archive's md5 has matched, so say what differs, not that the file is someone else's.
_NOT_THE_DATASET = "The published dataset is not laid out like this."


def tiny_imagenet_to_class_folders(extracted_root, class_root):
    """Gathers Tiny ImageNet's labelled images into one folder per class.

    The archive holds ``train/<wnid>/images/*.JPEG`` (500 per class) and
    ``val/images/*.JPEG`` (50 per class, labelled by ``val/val_annotations.txt``). Both go
    into ``class_root/<wnid>/``: 200 classes of 550 JPEGs, 64x64 RGB. The official
    train/val split is not kept: training draws its own train/validation/test split
    from the tree. The unlabelled ``test/`` images and the bounding boxes are left out.
    Classes keep their WordNet ids (``n01443537``), which are unique and stable; the
    archive's ``words.txt`` gives their names. Files are moved, not copied.

    Args:
        extracted_root: the extracted ``tiny-imagenet-200`` folder (a ``pathlib.Path``).
        class_root: the folder to create (a ``pathlib.Path``); it must not exist yet.

    Raises:
        UserError: ``wnids.txt`` or a class's ``train`` folder is missing, or a line of
            ``val_annotations.txt`` is malformed, names a class not in ``wnids.txt``, a
            file that is not there, or a name that is not a plain file name (a path
            separator or ``..``).
    """
    wnids = _read_wnids(extracted_root / "wnids.txt")
    val_labels = _read_val_labels(extracted_root / "val" / "val_annotations.txt", set(wnids))
    class_root.mkdir()
    for wnid in wnids:
        train_images = extracted_root / "train" / wnid / "images"
        if not train_images.is_dir():
            raise UserError(f"{train_images} is missing, but {wnid} is listed in wnids.txt. "
                            f"{_NOT_THE_DATASET}")
        os.replace(train_images, class_root / wnid)  # one rename moves the class's 500 images
    val_images = extracted_root / "val" / "images"
    for filename, wnid in val_labels:
        target = class_root / wnid / filename
        if not (val_images / filename).is_file():
            raise UserError(f"val_annotations.txt labels {filename}, but {val_images / filename} "
                            f"is missing. {_NOT_THE_DATASET}")
        if target.exists():  # os.replace would silently overwrite it
            raise UserError(f"val_annotations.txt labels {filename} as {wnid}, but {wnid} already "
                            f"has an image of that name. {_NOT_THE_DATASET}")
        os.replace(val_images / filename, target)


def _read_wnids(path):
    """Returns the class ids listed in Tiny ImageNet's ``wnids.txt``, one per line, in file order."""
    wnids = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    for wnid in wnids:
        _check_plain_name(wnid, str(path))
    if not wnids or len(set(wnids)) != len(wnids):
        raise UserError(f"{path} should list distinct class ids, one per line. Received "
                        f"{len(wnids)} lines, {len(set(wnids))} distinct. {_NOT_THE_DATASET}")
    return wnids


def _read_val_labels(path, wnids):
    """Returns ``[(file name, wnid)]`` from ``val_annotations.txt``.

    Each line is tab-separated: file name, wnid, then the box (x0, y0, x1, y1), unused here.

    Args:
        path: the annotations file.
        wnids: the set of valid class ids.

    Raises:
        UserError: a line with fewer than two fields, an unknown wnid, or a file name
            that is not a plain name.
    """
    labels = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path} line {number}"
        if len(fields) < 2:
            raise UserError(f"{where} should be tab-separated: file name, wnid, box. "
                            f"Received: {line!r}. {_NOT_THE_DATASET}")
        filename, wnid = fields[0].strip(), fields[1].strip()
        _check_plain_name(filename, where)
        if wnid not in wnids:
            raise UserError(f"{where} labels {filename} as {wnid!r}, which is not in wnids.txt. "
                            f"{_NOT_THE_DATASET}")
        labels.append((filename, wnid))
    return labels


def cifar100_to_class_folders(extracted_root, class_root):
    """Writes CIFAR-100's training and test images as PNGs, one folder per fine label.

    The archive holds three pickles: ``meta`` (the 100 fine label names) and ``train``
    and ``test`` (50,000 and 10,000 images). Both splits go into
    ``class_root/<fine label name>/<file name>``, with the file names the pickles give:
    100 classes of 600 lossless 32x32 RGB PNGs. The official train/test split is not
    kept: training draws its own split from the tree. A file name that repeats within a
    class gets ``_<split><row>`` added, so no image is overwritten.

    Args:
        extracted_root: the extracted ``cifar-100-python`` folder (a ``pathlib.Path``).
        class_root: the folder to create (a ``pathlib.Path``); it must not exist yet.

    Raises:
        UserError: a pickle is missing, damaged, or names a Python global other than
            the numpy array builders; or its contents do not have CIFAR-100's shape.
    """
    class_names = _cifar_class_names(extracted_root / "meta")
    class_root.mkdir()
    for class_name in class_names:
        (class_root / class_name).mkdir()
    taken = set()  # (label, file name) already written: the names must not collide
    for split in ("train", "test"):
        images, labels, filenames = _load_cifar_split(extracted_root / split, len(class_names))
        for row, (image, label, filename) in enumerate(zip(images, labels, filenames)):
            if (label, filename) in taken:
                stem, extension = os.path.splitext(filename)
                filename = f"{stem}_{split}{row}{extension}"
            taken.add((label, filename))
            _write_png(class_root / class_names[label] / filename, image)


def _write_png(path, image):
    """Writes one (32, 32, 3) uint8 RGB image as a lossless PNG.

    ``cv2.imencode`` and a Python write rather than ``cv2.imwrite``: ``imwrite`` reports a
    failure (a full disk) only as False, while ``write_bytes`` raises an OSError saying why.
    """
    encoded_ok, encoded = cv2.imencode(".png", image[..., ::-1])  # RGB -> OpenCV's BGR
    if not encoded_ok:
        raise UserError(f"OpenCV could not encode {path.name} as PNG.")
    path.write_bytes(encoded.tobytes())


def _cifar_class_names(path):
    """Returns the fine label names from CIFAR-100's ``meta`` pickle, label order."""
    meta = _load_pickle(path)
    names = [_decode(name, f"{path} fine_label_names") for name in _field(meta, b"fine_label_names", path)]
    for name in names:
        _check_plain_name(name, f"{path} fine_label_names")
    if not names or len(set(names)) != len(names):
        raise UserError(f"{path} should list distinct fine label names. Received {len(names)} "
                        f"names, {len(set(names))} distinct. {_NOT_THE_DATASET}")
    return names


def _load_cifar_split(path, num_classes):
    """Reads one CIFAR-100 split pickle and checks its shapes.

    Args:
        path: the ``train`` or ``test`` pickle.
        num_classes: how many fine label names ``meta`` has; labels index them.

    Returns:
        (images, labels, file names): a uint8 array of shape (N, 32, 32, 3), RGB; N label
        ints in ``[0, num_classes)``; N plain file names ending in ``.png``.

    Raises:
        UserError: a key is missing, ``data`` is not a (N, 3072) uint8 array, the three
            lengths differ, a label is out of range, or a file name is not plain.
    """
    split = _load_pickle(path)
    data = _field(split, b"data", path)
    labels = _field(split, b"fine_labels", path)
    filenames = _field(split, b"filenames", path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _CIFAR_ROW_LENGTH):
        raise UserError(f"{path}: data should be a uint8 array of shape (images, {_CIFAR_ROW_LENGTH}). "
                        f"Received: {_describe(data)}. {_NOT_THE_DATASET}")
    if not (isinstance(labels, list) and isinstance(filenames, list)
            and len(labels) == len(filenames) == len(data)):
        raise UserError(f"{path}: data, fine_labels and filenames should describe the same images. "
                        f"Received {len(data)} rows, {_describe(labels)} and {_describe(filenames)}. "
                        f"{_NOT_THE_DATASET}")
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
            raise UserError(f"{path}: a fine label should be an int in [0, {num_classes}). "
                            f"Received: {label!r}. {_NOT_THE_DATASET}")
    names = []
    for filename in filenames:
        name = _decode(filename, f"{path} filenames")
        _check_plain_name(name, f"{path} filenames")
        names.append(name if name.lower().endswith(".png") else name + ".png")
    # Each row is the red plane, then green, then blue, each 32x32 row-major.
    images = data.reshape(-1, 3, CIFAR_IMAGE_SIZE, CIFAR_IMAGE_SIZE)  # (N, channels, h, w)
    return images.transpose(0, 2, 3, 1), labels, names  # (N, h, w, channels), RGB


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays; refuses every other Python global.

    Unpickling calls whatever functions the pickle names (``os.system`` included), so
    ``find_class`` allows only what numpy needs to rebuild an array. The CIFAR files
    were written by Python 2's numpy, which names ``numpy.core.multiarray._reconstruct``;
    numpy 2 writes ``numpy._core.multiarray._reconstruct``. Both map to the function
    numpy itself pickles arrays with, not to whatever the module path would import.
    Python 2 ``str`` values load as bytes (``encoding="bytes"``), as the CIFAR page says.
    """

    _RECONSTRUCT = np.empty(0).__reduce__()[0]
    ALLOWED_GLOBALS = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module, name):
        """Returns an allowed numpy global; raises UserError naming any other."""
        allowed = self.ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UserError(f"refused to unpickle {self.path}: it asks for the Python global "
                            f"{module}.{name}, and only numpy arrays are allowed (a pickle can run "
                            f"any function it names). {_NOT_THE_DATASET}")
        return allowed


def _load_pickle(path):
    """Loads a CIFAR pickle through :class:`_NumpyArrayUnpickler`; any failure is a UserError."""
    try:
        with open(path, "rb") as file:
            return _NumpyArrayUnpickler(file, path).load()
    except FileNotFoundError:
        raise UserError(f"{path} is missing. {_NOT_THE_DATASET}") from None
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError) as error:
        raise UserError(f"{path} could not be unpickled ({type(error).__name__}: {error}). "
                        f"{_NOT_THE_DATASET}") from error


def _field(mapping, key, path):
    """Returns ``mapping[key]``; raises UserError if ``mapping`` is not a dict holding ``key``."""
    if not isinstance(mapping, dict) or key not in mapping:
        raise UserError(f"{path} should hold a dict with the key {key!r}. Received: "
                        f"{_describe(mapping)}. {_NOT_THE_DATASET}")
    return mapping[key]


def _decode(value, where):
    """Returns ``value`` as text: Python 2 ``str`` loads as bytes, decoded here as UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    raise UserError(f"{where} should hold text. Received: {value!r:.80}. {_NOT_THE_DATASET}")


def _read_text(path):
    """Returns a text file's contents; a missing or non-UTF-8 file is a UserError."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path} is missing. {_NOT_THE_DATASET}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text ({error}). {_NOT_THE_DATASET}") from error


def _check_plain_name(name, where):
    """Raises UserError unless ``name`` is one visible file or folder name, safe to join to a path.

    Args:
        name: a class id, label name or file name read from the archive.
        where: the file (and line) it was read from, for the message.
    """
    if not name or name.startswith(".") or any(char in name for char in ("/", "\\", "\0")):
        raise UserError(f"{where} names {name!r}, which is not a plain file or folder name (empty, "
                        f"hidden, .., or holding a path separator). {_NOT_THE_DATASET}")


def _describe(value):
    """Returns a short description of an unpickled value for an error message."""
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"
