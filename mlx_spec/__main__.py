"""The `mlx-spec` command (and `python -m mlx_spec`): the CLI, imported only once Ctrl-C is
ours to handle, so that a Ctrl-C while the command is still starting ends it quietly (exit
code 130), as it does later."""

import sys


def main() -> None:
    try:
        from mlx_spec.cli import app  # typer, rich and the CLI's modules: most of the start
    except KeyboardInterrupt:
        sys.exit(130)
    app()


if __name__ == "__main__":
    main()
