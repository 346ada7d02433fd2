"""The terminal UI: a Textual app that drives the engine over its ZeroMQ protocol (see docs/tui.md).

:func:`tui.app.run_tui` runs it; :class:`tui.app.AteApp` is the app. The
engine is another process: the UI only reads its state stream and posts
commands, so a slow terminal never delays the audio.
"""
