"""The README's two set-up commands are the ones CI runs and they point at files that exist."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    readme = read("README.md")
    test_command = next(line for block in bash_blocks(readme) for line in block.splitlines() if "pytest" in line)
    # CI creates the venv itself; everything after the venv activation must be identical.
    tail = test_command.split("&& pip install torch", 1)[1]
    assert "pip install torch" + tail in read(".ci/run")


def test_main_job_command_uses_files_in_the_repo():
    readme = read("README.md")
    main_command = next(line for block in bash_blocks(readme) for line in block.splitlines() if "pulse-ext upscale" in line)
    for path in re.findall(r"examples/\S+", main_command):
        assert os.path.exists(os.path.join(ROOT, path)), path
