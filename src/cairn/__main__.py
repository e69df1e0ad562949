"""``python -m cairn``: the ``cairn`` command line."""

from cairn.cli import main

if __name__ == "__main__":
    main(prog_name="cairn")
