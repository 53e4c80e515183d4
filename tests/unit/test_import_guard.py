"""`operator/` is the source root, never a package: `import operator` must stay the standard library."""

import importlib
import sysconfig
from pathlib import Path

from .support import REPO


def test_import_operator_is_the_standard_library() -> None:
    operator = importlib.import_module("operator")

    assert callable(operator.itemgetter)
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert operator.__file__ is not None
    assert Path(operator.__file__).resolve().is_relative_to(stdlib)


def test_operator_directory_has_no_init_module() -> None:
    assert not (REPO / "operator" / "__init__.py").exists()


def test_qfleet_is_imported_from_the_operator_source_root() -> None:
    qfleet = importlib.import_module("qfleet")

    assert qfleet.__file__ is not None
    assert Path(qfleet.__file__).resolve().is_relative_to(REPO / "operator" / "qfleet")
