"""Every renderer of results: terminal tables, Markdown, plots and GitHub annotations.

The commands compute; this package presents. ``verify`` renders the parity gate (its table,
its worst flips, GitHub annotations and step summary), ``pipeline`` the other steps a user
watches (training metrics, a checkpoint's description, an export's artifacts, the client,
the demo), ``bench`` and ``sweep`` their reports as tables and plots.
"""
