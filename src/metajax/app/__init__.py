"""The application: the ``metajax`` command and its run folders.

``metajax train``, ``eval``, ``continual``, ``bench`` and ``plot`` are built here on top of
the library. The library (every other ``metajax`` module) never imports this package; its
errors name Python arguments, and the commands here translate them to flags.
"""
