"""Development tools that work on a source checkout and are not installed with the package."""
