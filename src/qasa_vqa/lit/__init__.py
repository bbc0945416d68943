"""Lightning systems: thin training loops around the plain modules of ``qasa_vqa.models``."""
