"""Installs the start-up hook ``zsl_torchvision_hook.pth`` beside the package (everything else is in
pyproject.toml): Python runs its line at start-up, so torchvision imported before ``pipeline`` still gets
the fix of ``pipeline/compat.py``."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HOOK = "zsl_torchvision_hook.pth"


class BuildPyWithStartupHook(build_py):
    """build_py that also writes the ``.pth`` file into site-packages: into the wheel's root (``build_lib``)
    for an install, into the editable wheel's root (``install_lib`` while editable_wheel runs) for
    ``pip install -e``, whose wheel otherwise only holds the link to the sources."""

    def run(self) -> None:
        super().run()
        root = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / HOOK).write_text("import zsl_torchvision_hook\n")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / HOOK)]


setup(cmdclass={"build_py": BuildPyWithStartupHook})
