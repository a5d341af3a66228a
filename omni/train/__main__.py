"""`python -m omni.train` (and `torchrun --nproc_per_node N -m omni.train`): `omni train` itself, the
same command with the same options, for launchers that run a module."""

import sys


def main() -> None:
    import typer

    from omni.cli import app

    command = typer.main.get_command(app).commands["train"]
    sys.exit(command.main(args=sys.argv[1:], prog_name="python -m omni.train"))


if __name__ == "__main__":
    main()
