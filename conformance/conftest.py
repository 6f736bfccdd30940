# The moe-cts plugin is registered through the package's pytest11 entry point; nothing else here.
