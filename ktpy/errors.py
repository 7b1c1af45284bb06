"""Every failure a user can meet, as one exception tree.

Each class carries its own exit code and a one-line hint, in the manner of
httpie's exit statuses and flask's ``NoAppException``. Click prints them as::

    Error: <message>
    Hint: <hint>

and exits with the class's code. ``--debug`` adds the traceback (see ktpy.cli).

Exit codes (also listed in docs/design.md):

====  ==========================  ===========================================
code  class                       meaning
====  ==========================  ===========================================
1     KtpyError                   anything not more specific
2     UsageProblem                bad arguments or flags
3     ConfigProblem               bad config file or KTPY_* variable
4     NeedsRoot                   the command changes the host and needs root
5     NoTunDevice                 /dev/net/tun is missing or unusable
6     AlreadyRunning              another ktpy connect runs on this machine
7     UnreadableInstall           the user a root connect becomes cannot read ktpy
10    ClusterUnreachable          the API server cannot be reached
11    Forbidden                   RBAC refused a request
17    ApiTimeout                  the API server did not answer in time
18    ApiServerError              the API server failed (HTTP 5xx)
19    ApiThrottled                the API server turned requests away (HTTP 429)
12    ServiceNotFound             no such Service
13    PortNotInService            --expose names a port the Service lacks
14    NoSelector                  the Service has no selector to switch
15    UnresolvedTargetPort        a named targetPort no pod declares
16    WorkloadUnreadable          ktpy env: the target or a reference is missing
20    AlreadyExchanged            another live session holds the Service
21    NameTaken                   a name ktpy would create already exists
22    LockLost                    this session's lock was taken over
23    ContestedField              another writer keeps setting back a field ktpy set
30    ImageUnavailable            the shadow image cannot be pulled
31    PodStartFailed              the shadow pod did not start
32    PodSecurityRejected         Pod Security admission refused the pod
33    PodStartTimeout             the shadow pod was not ready in time
40    SessionLost                 the tunnel could not be re-established
41    HostKeyMismatch             the shadow's SSH host key is not the pinned one
42    TunnelProtocolError         the port-forward broke the WebSocket protocol
43    PortForwardRefused          the API server or kubelet refused the first port-forward
44    SshAuthFailed               the shadow's sshd refused the session key
45    SshHandshakeFailed          no SSH server answered through the port-forward (banner)
50    HostChangeFailed            a change to this machine could not be made
51    UndoFailed                  a change to this machine could not be undone
52    JournalProblem              the journal of host changes cannot be used
53    BadJournalEntry             an entry of the journal cannot be read
60    ProblemFound                ktpy doctor found a problem (it names it)
70    InternalError               a bug in ktpy
130   Interrupted                 Ctrl-C (SIGINT)
143   Terminated                  SIGTERM
129   HungUp                      SIGHUP
====  ==========================  ===========================================
"""

from __future__ import annotations

import signal
from datetime import timedelta
from typing import IO, Any, ClassVar

import click

from ktpy.durations import format_duration

DEFAULT_IMAGE_REPOSITORY = "ghcr.io/ktpy/shadow"
# Where a user reads how to get the shadow image into their cluster.
IMAGE_DOC = "docs/shadow-image.md#getting-it-into-your-cluster"


class KtpyError(click.ClickException):
    """Base of every error ktpy reports to the user."""

    exit_code = 1
    default_hint: ClassVar[str] = "Run again with --debug for details."

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint if hint is not None else self.default_hint

    def show(self, file: IO[Any] | None = None) -> None:
        to_stderr = file is None
        click.echo(
            f"Error: {self.format_message()}", file=file, err=to_stderr, color=self.show_color
        )
        if self.hint:
            click.echo(f"Hint: {self.hint}", file=file, err=to_stderr, color=self.show_color)


class UsageProblem(KtpyError):
    exit_code = 2
    default_hint = "See 'ktpy --help' or 'ktpy COMMAND --help'."


class ConfigProblem(KtpyError):
    exit_code = 3
    default_hint = "Fix or remove the setting named above; precedence is flag > KTPY_* > config."


class NeedsRoot(KtpyError):
    exit_code = 4
    default_hint = "Run it with sudo, or use 'ktpy connect --mode socks', which needs no root."


class NoTunDevice(KtpyError):
    exit_code = 5
    default_hint = (
        "Load the tun module or give the container /dev/net/tun; "
        "'ktpy connect --mode socks' works without it."
    )


class AlreadyRunning(KtpyError):
    exit_code = 6
    default_hint = "Stop the other ktpy connect first, or run 'ktpy clean --local' if it crashed."


class UnreadableInstall(KtpyError):
    """ktpy's own files cannot be read by the user a root session becomes."""

    exit_code = 7
    default_hint = (
        "Install ktpy where the invoking user can read it (as that user: "
        "'pipx install ktpy'), then run it with sudo."
    )


class ClusterUnreachable(KtpyError):
    exit_code = 10
    default_hint = "Check that 'kubectl get ns' works with the same --kubeconfig and --context."


class Forbidden(KtpyError):
    exit_code = 11
    default_hint = (
        "Ask for the Role of this command in docs/rbac/ (one per command), "
        "or check the namespace with -n."
    )

    def __init__(self, verb: str, resource: str, namespace: str | None, detail: str = "") -> None:
        where = f" in namespace {namespace!r}" if namespace else ""
        message = f"not allowed to {verb} {resource}{where}"
        if detail:
            message = f"{message}: {detail}"
        super().__init__(message)
        self.verb = verb
        self.resource = resource
        self.namespace = namespace


class ApiTimeout(KtpyError):
    exit_code = 17
    default_hint = (
        "The API server is slow or the network drops packets; check 'kubectl get ns', then retry."
    )


class ApiServerError(KtpyError):
    exit_code = 18
    default_hint = "The API server (or etcd behind it) failed; retry, or ask its administrator."


class ApiThrottled(KtpyError):
    exit_code = 19
    default_hint = "The API server limits this user's requests (HTTP 429); wait a moment and retry."


class ServiceNotFound(KtpyError):
    exit_code = 12
    default_hint = "List them with 'kubectl get services -n NAMESPACE'."

    def __init__(self, service: str, namespace: str) -> None:
        super().__init__(f"service {service!r} not found in namespace {namespace!r}")
        self.service = service
        self.namespace = namespace


class PortNotInService(KtpyError):
    exit_code = 13
    default_hint = "REMOTE in --expose LOCAL:REMOTE is a port, target port or port name of it."

    def __init__(self, service: str, port: int | str, known: list[str]) -> None:
        listed = ", ".join(known) if known else "none"
        super().__init__(f"service {service!r} has no port {port!r} (it has: {listed})")
        self.service = service
        self.port = port


class UnresolvedTargetPort(PortNotInService):
    """A named target port that no backing pod (or Deployment template) declares."""

    exit_code = 15

    default_hint = (
        "The Service's targetPort names a container port; start at least one of its pods, "
        "or expose the target port by number."
    )

    def __init__(self, service: str, name: str) -> None:
        KtpyError.__init__(
            self,
            f"service {service!r} has target port {name!r}, "
            "but none of its pods declares a container port of that name",
        )
        self.service = service
        self.port = name


class NoSelector(KtpyError):
    exit_code = 14
    default_hint = "A Service without a selector has hand-made endpoints that ktpy cannot redirect."

    def __init__(self, service: str) -> None:
        super().__init__(f"service {service!r} has no selector")
        self.service = service


class WorkloadUnreadable(KtpyError):
    """``ktpy env``: the target, its ready pod, a container or a non-optional
    reference of it cannot be found (what the kubelet would refuse too)."""

    exit_code = 16
    default_hint = "Check the name with 'kubectl get' and the namespace (-n)."


class AlreadyExchanged(KtpyError):
    exit_code = 20
    default_hint = (
        "Wait for that session to end; if it crashed, 'ktpy clean' removes it once stale."
    )

    def __init__(self, service: str, owner: str, age: timedelta, role: str = "exchanged") -> None:
        super().__init__(
            f"service {service!r} is already {role} by {owner} (since {format_duration(age)} ago)"
        )
        self.service = service
        self.owner = owner
        self.age = age


class NameTaken(KtpyError):
    exit_code = 21
    default_hint = "Choose another name, or delete the existing object if it is yours."

    def __init__(
        self, kind: str, name: str, namespace: str, *, detail: str = "", hint: str | None = None
    ) -> None:
        message = f"{kind} {name!r} already exists in namespace {namespace!r}"
        super().__init__(f"{message} ({detail})" if detail else message, hint=hint)
        self.kind = kind
        self.name = name


class LockLost(KtpyError):
    exit_code = 22
    default_hint = "Another session or 'ktpy clean' took over; start again if you still need it."


class ContestedField(KtpyError):
    """Someone else (a GitOps controller's self-heal, an operator) keeps setting a field
    ktpy set back to their value: ktpy stops instead of fighting them."""

    exit_code = 23
    default_hint = "Pause the other writer (its sync) while the session runs."


class ImageUnavailable(KtpyError):
    exit_code = 30

    def __init__(self, image: str, reason: str) -> None:
        super().__init__(f"cannot pull the shadow image {image}: {reason}")
        self.image = image
        if image.startswith(DEFAULT_IMAGE_REPOSITORY + ":"):
            self.hint = (
                f"{image} is not published: build it with shadow-image/build.sh, push it to a "
                "registry the cluster can pull from, and name it once in the config file "
                f"('image: REF') or with --image; see {IMAGE_DOC}."
            )
        else:
            self.hint = (
                "Check the image name and tag, and that the cluster can pull from that "
                f"registry; see {IMAGE_DOC}."
            )


class PodStartFailed(KtpyError):
    exit_code = 31
    default_hint = "See 'kubectl describe pod' for the events; ktpy deleted what it created."


class PodSecurityRejected(KtpyError):
    exit_code = 32
    default_hint = (
        "The namespace's Pod Security level refused the shadow pod; "
        "the default shadow image meets 'restricted', a custom --image may not."
    )


class PodStartTimeout(KtpyError):
    exit_code = 33
    default_hint = "The cluster may be slow to schedule or pull; see 'kubectl get events'."


class SessionLost(KtpyError):
    exit_code = 40
    default_hint = "The tunnel to the shadow pod broke and did not come back; run again."


class TunnelProtocolError(SessionLost):
    exit_code = 42
    default_hint = (
        "The API server, or a proxy in front of it, sent WebSocket frames RFC 6455 forbids; "
        "if it happens again, report it with the proxy's name."
    )


class HostKeyMismatch(KtpyError):
    exit_code = 41
    default_hint = (
        "Something other than this session's shadow pod answered; nothing was sent to it."
    )


class PortForwardRefused(KtpyError):
    """The first port-forward to the shadow pod failed (later ones are reconnects)."""

    exit_code = 43
    default_hint = (
        "The API server or the node's kubelet refused the port-forward; check that "
        "'kubectl port-forward' to a pod works, and the rights pods/portforward (create, get)."
    )


class SshAuthFailed(KtpyError):
    exit_code = 44
    default_hint = (
        "The shadow pod's sshd refused this session's key; with a custom --image, check that "
        "it reads /etc/ktpy/secret/authorized_keys."
    )


class SshHandshakeFailed(KtpyError):
    """Nothing that speaks SSH answered through the port-forward (no banner)."""

    exit_code = 45
    default_hint = (
        "The shadow pod's sshd did not answer; with a custom --image, check that it runs "
        "sshd on the port ktpy expects, else see 'kubectl logs' of the shadow pod."
    )


class HostChangeFailed(KtpyError):
    exit_code = 50
    default_hint = (
        "ktpy undoes what it changed before it exits; if it was killed, "
        "run 'sudo ktpy clean --local'."
    )


class UndoFailed(KtpyError):
    exit_code = 51
    default_hint = "The journal is kept; fix the cause and run 'sudo ktpy clean --local' again."


class JournalProblem(KtpyError):
    exit_code = 52
    default_hint = "See the journal directory named above; 'sudo ktpy clean --local' replays it."


class BadJournalEntry(KtpyError):
    exit_code = 53
    default_hint = "The journal was written by another ktpy version or damaged; it is kept."


class ProblemFound(KtpyError):
    """``ktpy doctor`` found a problem; the message names it, the hint what to do."""

    exit_code = 60
    default_hint = "See docs/troubleshooting.md."


class InternalError(KtpyError):
    exit_code = 70
    default_hint = "This is a bug in ktpy; run again with --debug and report the traceback."


class Interrupted(KtpyError):
    """Stopped by Ctrl-C. The exit code is the shell's: 128 + signal number."""

    exit_code = 128 + signal.SIGINT
    default_hint = ""
    signum: ClassVar[int] = signal.SIGINT

    def __init__(self, ending: str | None = None) -> None:
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")
        # A session command's last line (what it undid) takes the place of "Error: ...".
        self.ending = ending

    def show(self, file: IO[Any] | None = None) -> None:
        if self.ending is None:
            super().show(file)
        else:
            click.echo(self.ending, file=file, err=file is None)

    @staticmethod
    def for_signal(signum: int, ending: str | None = None) -> Interrupted:
        for cls in (Interrupted, Terminated, HungUp):
            if cls.signum == signum:
                return cls(ending)
        raise ValueError(f"no exit status for signal {signum}")


class Terminated(Interrupted):
    exit_code = 128 + signal.SIGTERM
    signum = signal.SIGTERM


class HungUp(Interrupted):
    exit_code = 128 + signal.SIGHUP
    signum = signal.SIGHUP
