"""``python -m hgrn_tools.train`` (also under ``torchrun -m``; ``python -m tools.train`` from a checkout)."""
from .cli import main

if __name__ == '__main__':
    main()
