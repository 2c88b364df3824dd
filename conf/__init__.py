"""The config tree, which the wheel installs as package ``apps.conf`` (``apps/conf``), not as a top-level
``conf``. This file is what lets an editable install map ``apps.conf`` onto this folder (setuptools' editable
finder maps a package only onto a folder with an ``__init__.py``); Hydra's ``pkg://apps.conf.<app>``
searchpaths need the ``__init__.py`` of burned_area/, deforestation/, detection/ and segmentation/ too."""
