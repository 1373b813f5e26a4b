"""mmpref: multi-modal preference alignment notebooks (Li, Lin, Pei, ACL 2024), reproducible end to end."""

__version__ = "0.1.0"
