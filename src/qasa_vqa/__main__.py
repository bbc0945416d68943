"""``python -m qasa_vqa ...`` runs the ``qasa-vqa`` command line."""

from qasa_vqa.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
