"""The local executor's mount list: volumes, the termination log, and the image's own host directories bound back
on top when a volume (an emptyDir at /tmp) would hide them (a checkout under /tmp, as CI clones have)."""
from __future__ import annotations

from pathlib import Path

from localfleet.executor.podspec import ImageEnvironment, container_mounts, image_host_paths


def test_image_host_paths_are_the_existing_absolute_directories_of_path_and_path_lists(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "src").mkdir()
    image = ImageEnvironment((str(tmp_path / "bin"), "/no/such/dir", "relative"),
                             {"PYTHONPATH": f"{tmp_path / 'src'}:{tmp_path / 'gone'}", "HOME": "/tmp/x-missing"})
    assert image_host_paths(image) == [str(tmp_path / "bin"), str(tmp_path / "src")]


def test_a_host_path_under_a_volume_is_bound_back_read_only_and_others_are_left_alone(tmp_path: Path) -> None:
    container = {"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                  {"name": "artifacts", "mountPath": "/var/lib/qfleet/artifacts"}]}
    sources = {"tmp": str(tmp_path / "emptydir"), "artifacts": str(tmp_path / "claim")}
    mounts = container_mounts(container, sources, tmp_path / "termination-log",
                              ["/tmp/ci-clone/runtime_image/bin", "/root/.cache/qfleet/venvs/runtime/bin"])
    assert mounts == [
        [str(tmp_path / "emptydir"), "/tmp", False],
        [str(tmp_path / "claim"), "/var/lib/qfleet/artifacts", False],
        [str(tmp_path / "termination-log"), "/dev/termination-log", False],
        ["/tmp/ci-clone/runtime_image/bin", "/tmp/ci-clone/runtime_image/bin", True],
    ]
