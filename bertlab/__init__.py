"""bertlab: the helper package of the bertlab course.

Each module holds one idea that a notebook taught, so later notebooks import
it instead of copying it (see DESIGN.md):

- ``bertlab.pretrained``: where the shipped checkpoint lives, loading it offline
- ``bertlab.data``: the synthetic fab (failure reports, labels, domain corpus)
- ``bertlab.env``: the environment check and device choice used by notebook 00
"""
__version__ = "0.1.0"
