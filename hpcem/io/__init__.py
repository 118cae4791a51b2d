"""Reading and writing image files (MRC via mrcfile, TIFF via tifffile) with checks.

Protocols call the facade in :mod:`hpcem.io.images`; :mod:`hpcem.io.mrc` and
:mod:`hpcem.io.tiff` hold the format-specific code.
"""

from hpcem.io.images import (
    ImageHeader,
    check_pixel_size,
    read_header,
    read_image,
    write_mrc,
    write_tiff_movie,
)

__all__ = [
    "ImageHeader",
    "check_pixel_size",
    "read_header",
    "read_image",
    "write_mrc",
    "write_tiff_movie",
]
