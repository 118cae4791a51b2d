"""A plugin that fails to import: hpcem must report it by name and load the others."""

raise ImportError("this plugin is broken on purpose")
