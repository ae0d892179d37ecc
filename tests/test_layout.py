import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_platform_folder_never_shadows_the_stdlib():
    out = subprocess.run([sys.executable, "-c", "import platform; print(platform.__file__)"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "site-packages" not in out and str(REPO / "platform") not in out
    assert not (REPO / "platform" / "__init__.py").exists()


def test_card_folders_exist():
    for d in ("platform/aimass", "registry", "pipelines", "bentos", "dashboards", "infra", "tests"):
        assert (REPO / d).is_dir(), d
    assert (REPO / "dvc.yaml").is_file() and (REPO / "pyproject.toml").is_file()
