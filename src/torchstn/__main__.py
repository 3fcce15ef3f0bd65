"""``python -m torchstn`` (and ``torchrun -m torchstn``) runs the command line."""

from torchstn.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
