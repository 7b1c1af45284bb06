"""``python -m ktpy`` runs the same CLI as the ``ktpy`` script."""

from ktpy.cli import main

main()
