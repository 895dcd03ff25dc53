"""The ground floor: what every other layer imports, importing nothing of them.

    core.constants   the ignore label and the ImageNet statistics
    core.palette     colour palettes and class-name files
    core.cli         one-line errors, YAML defaults, argument types
    core.platform    atomic files, locks, links, directory fsync and signals, with a path for each OS
    core.runtime     device, precision, memory format and compile: one policy and one flag group
    core.checkpoint  the versioned checkpoint format: writing, reading, describing
"""
