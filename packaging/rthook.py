"""PyInstaller run-time hook (runs before any other module is imported): unpack the executable's
runtime blob once into the user's cache and link its libraries into sys._MEIPASS (see
llamafile_runtime.py)."""
import llamafile_runtime

llamafile_runtime.boot()
