"""System tags describing where a run comes from: user, source file, git state, readable name."""

from __future__ import annotations

import functools
import getpass
import os
import random
import subprocess
import sys
from pathlib import Path

from cairn.tracking import system_tags

_ADJECTIVES = (
    "amber", "bold", "brave", "bright", "calm", "clever", "crisp", "daring", "eager", "fair",
    "fast", "gentle", "glad", "golden", "grand", "keen", "kind", "lively", "lucid", "merry",
    "misty", "noble", "polite", "proud", "quick", "quiet", "rapid", "silent", "silver", "sleek",
    "smooth", "steady", "stellar", "sunny", "swift", "tidy", "vivid", "warm", "wise", "witty",
)  # fmt: skip
_NOUNS = (
    "badger", "bear", "crane", "deer", "dolphin", "eagle", "falcon", "finch", "fox", "gecko",
    "hare", "hawk", "heron", "ibis", "jay", "koala", "lark", "lynx", "marten", "mole",
    "moose", "newt", "otter", "owl", "panda", "quail", "raven", "robin", "seal", "shrew",
    "sparrow", "stork", "swan", "tern", "tiger", "toad", "trout", "vole", "wolf", "wren",
)  # fmt: skip


def generate_run_name() -> str:
    """A readable name such as ``swift-otter-417``."""
    rng = random.SystemRandom()
    return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}-{rng.randint(100, 999)}"


def current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return os.environ.get("USER", "unknown")


def source_name() -> str:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path:
        return str(Path(path).resolve())
    return sys.argv[0] if sys.argv and sys.argv[0] else "<interactive>"


@functools.lru_cache(maxsize=8)
def git_state(directory: str) -> dict[str, str]:
    """Commit, branch, remote and dirty flag of the repository holding ``directory`` (empty if none)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    tags = {system_tags.GIT_COMMIT: commit}
    status = git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        tags[system_tags.GIT_DIRTY] = "true" if status else "false"
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags[system_tags.GIT_BRANCH] = branch
    remote = git("config", "--get", "remote.origin.url")
    if remote:
        tags[system_tags.GIT_REPO_URL] = remote
    return tags


def default_tags() -> dict[str, str]:
    """System tags for a new run started from this process."""
    source = source_name()
    tags = {
        system_tags.USER: current_user(),
        system_tags.SOURCE_NAME: source,
        system_tags.SOURCE_TYPE: "LOCAL",
    }
    directory = str(Path(source).parent) if os.path.isfile(source) else os.getcwd()
    tags.update(git_state(directory))
    return tags
