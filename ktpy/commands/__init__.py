"""One module per command (connect, exchange, mesh, preview, forward, status, env, clean,
recover, doctor).

Commands wire the session, the cluster, tunnel, net and host modules together;
they hold no protocol logic of their own. A command is listed in ``COMMANDS``,
and so appears in ``ktpy --help``, only once it works end to end.
"""

from __future__ import annotations

import click

from ktpy.commands.clean import clean
from ktpy.commands.connect import connect
from ktpy.commands.doctor import doctor
from ktpy.commands.env import env
from ktpy.commands.exchange import exchange
from ktpy.commands.forward import forward
from ktpy.commands.mesh import mesh
from ktpy.commands.preview import preview
from ktpy.commands.recover import recover
from ktpy.commands.status import status

COMMANDS: tuple[click.Command, ...] = (
    connect,
    exchange,
    mesh,
    preview,
    forward,
    status,
    env,
    clean,
    recover,
    doctor,
)
