"""``python -m medlite ...``: the ``medlite`` command, for launchers that run a module rather than a script
(``torchrun -m medlite train ...``; see README "Several machines")."""

from medlite.cli import app

if __name__ == "__main__":
    app(prog_name="medlite")
