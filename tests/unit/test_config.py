import pwd
from datetime import timedelta
from pathlib import Path

import pytest

from ktpy.config import (
    BUILT_IN,
    DEFAULT_IMAGE,
    ROOT_JOURNAL_DIR,
    Invoker,
    config_file_path,
    detect_invoker,
    read_kubeconfig_view,
    resolve_settings,
    unprivileged_identity,
)
from ktpy.errors import ConfigProblem
from ktpy.logs import LogFormat


def passwd(name: str, uid: int, home: str) -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, uid, "", home, "/bin/sh"))


def user(home: Path, name: str = "alice", uid: int = 1000) -> Invoker:
    return Invoker(user=name, uid=uid, gid=uid, home=home, via_sudo=False, is_root=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


KUBECONFIG = """
current-context: dev
contexts:
- name: dev
  context: {cluster: c, user: u, namespace: team-a}
- name: bare
  context: {cluster: c, user: u}
"""


class TestInvoker:
    def test_plain_user(self) -> None:
        def by_uid(uid: int) -> pwd.struct_passwd:
            return passwd("alice", uid, "/home/alice")

        def by_name(name: str) -> pwd.struct_passwd:
            raise AssertionError("no sudo, no lookup by name")

        invoker = detect_invoker({}, euid=1000, uid=1000, by_name=by_name, by_uid=by_uid)
        assert invoker == Invoker("alice", 1000, 1000, Path("/home/alice"), False, False)

    def test_under_sudo_the_invoking_user_counts(self) -> None:
        def by_name(name: str) -> pwd.struct_passwd:
            assert name == "bob"
            return passwd("bob", 1001, "/home/bob")

        def by_uid(uid: int) -> pwd.struct_passwd:
            return passwd("root", 0, "/root")

        environ = {"SUDO_USER": "bob", "HOME": "/root"}
        invoker = detect_invoker(environ, euid=0, uid=0, by_name=by_name, by_uid=by_uid)
        assert invoker.user == "bob"
        assert invoker.home == Path("/home/bob")
        assert invoker.via_sudo
        assert invoker.is_root

    def test_sudo_user_ignored_when_not_root(self) -> None:
        def by_uid(uid: int) -> pwd.struct_passwd:
            return passwd("carol", uid, "/home/carol")

        invoker = detect_invoker({"SUDO_USER": "bob"}, euid=1002, uid=1002, by_uid=by_uid)
        assert invoker.user == "carol"
        assert not invoker.via_sudo

    def test_unknown_sudo_user_is_a_config_problem(self) -> None:
        def by_name(name: str) -> pwd.struct_passwd:
            raise KeyError(name)

        with pytest.raises(ConfigProblem, match="SUDO_USER='ghost'"):
            detect_invoker({"SUDO_USER": "ghost"}, euid=0, uid=0, by_name=by_name)

    def test_uid_without_passwd_entry_falls_back_to_environment(self) -> None:
        def by_uid(uid: int) -> pwd.struct_passwd:
            raise KeyError(uid)

        invoker = detect_invoker(
            {"USER": "ci", "HOME": "/work"}, euid=4242, uid=4242, by_uid=by_uid
        )
        assert (invoker.user, invoker.home) == ("ci", Path("/work"))


class TestPrecedence:
    def test_built_in_defaults(self, tmp_path: Path) -> None:
        settings = resolve_settings({}, environ={}, invoker=user(tmp_path), hostname="lap")
        assert settings.namespace == "default"
        assert settings.image == DEFAULT_IMAGE
        assert settings.image.endswith(":0.1.0")
        assert settings.heartbeat_interval == timedelta(seconds=30)
        assert settings.stale_after == timedelta(minutes=3)
        assert settings.socks_port == 2223
        assert settings.log_format is LogFormat.CONSOLE
        assert settings.debug is False
        assert settings.owner == "alice@lap"
        assert settings.kubeconfig == (tmp_path / ".kube" / "config",)
        assert all(source == BUILT_IN for source in settings.sources.values())

    def test_config_file_beats_built_in(self, tmp_path: Path) -> None:
        write(
            tmp_path / ".config/ktpy/config.yaml",
            "namespace: from-config\nheartbeat-interval: 10s\nsocks-port: 1080\n",
        )
        settings = resolve_settings({}, environ={}, invoker=user(tmp_path), hostname="h")
        assert settings.namespace == "from-config"
        assert settings.heartbeat_interval == timedelta(seconds=10)
        assert settings.socks_port == 1080
        assert settings.source_of("namespace").startswith("config ")
        assert settings.source_of("image") == BUILT_IN

    def test_environment_beats_config(self, tmp_path: Path) -> None:
        write(tmp_path / ".config/ktpy/config.yaml", "namespace: from-config\n")
        settings = resolve_settings(
            {}, environ={"KTPY_NAMESPACE": "from-env"}, invoker=user(tmp_path), hostname="h"
        )
        assert settings.namespace == "from-env"
        assert settings.source_of("namespace") == "environment KTPY_NAMESPACE"

    def test_flag_beats_environment(self, tmp_path: Path) -> None:
        settings = resolve_settings(
            {"namespace": "from-flag", "image": None},
            environ={"KTPY_NAMESPACE": "from-env", "KTPY_IMAGE": "reg/img:1"},
            invoker=user(tmp_path),
            hostname="h",
        )
        assert settings.namespace == "from-flag"
        assert settings.source_of("namespace") == "flag --namespace"
        assert settings.image == "reg/img:1"

    def test_xdg_config_home(self, tmp_path: Path) -> None:
        write(tmp_path / "xdg/ktpy/config.yaml", "image: from/xdg:1\n")
        settings = resolve_settings(
            {},
            environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")},
            invoker=user(tmp_path / "home"),
            hostname="h",
        )
        assert settings.image == "from/xdg:1"

    def test_ktpy_config_names_the_file(self, tmp_path: Path) -> None:
        path = write(tmp_path / "elsewhere.yaml", "context: other\n")
        settings = resolve_settings(
            {}, environ={"KTPY_CONFIG": str(path)}, invoker=user(tmp_path), hostname="h"
        )
        assert settings.context == "other"
        assert settings.config_file == path


class TestNamespaceFromKubeconfig:
    def test_current_context_namespace(self, tmp_path: Path) -> None:
        write(tmp_path / ".kube/config", KUBECONFIG)
        settings = resolve_settings({}, environ={}, invoker=user(tmp_path), hostname="h")
        assert settings.namespace == "team-a"
        assert settings.source_of("namespace") == "kubeconfig context dev"

    def test_chosen_context_without_namespace_means_default(self, tmp_path: Path) -> None:
        write(tmp_path / ".kube/config", KUBECONFIG)
        settings = resolve_settings(
            {"context": "bare"}, environ={}, invoker=user(tmp_path), hostname="h"
        )
        assert settings.namespace == "default"
        assert settings.source_of("namespace") == BUILT_IN

    def test_config_file_namespace_beats_the_context(self, tmp_path: Path) -> None:
        write(tmp_path / ".kube/config", KUBECONFIG)
        write(tmp_path / ".config/ktpy/config.yaml", "namespace: mine\n")
        settings = resolve_settings({}, environ={}, invoker=user(tmp_path), hostname="h")
        assert settings.namespace == "mine"

    def test_kubeconfig_list_first_file_wins(self, tmp_path: Path) -> None:
        first = write(tmp_path / "a.yaml", "contexts:\n- name: dev\n  context: {namespace: one}\n")
        second = write(tmp_path / "b.yaml", KUBECONFIG)
        missing = tmp_path / "missing.yaml"
        view = read_kubeconfig_view((missing, first, second))
        assert view.current_context == "dev"
        assert view.context_namespaces["dev"] == "one"
        assert view.context_namespaces["bare"] is None

    def test_kubeconfig_env_is_a_path_list(self, tmp_path: Path) -> None:
        a = write(tmp_path / "a.yaml", "current-context: dev\n")
        b = write(tmp_path / "b.yaml", KUBECONFIG)
        settings = resolve_settings(
            {}, environ={"KUBECONFIG": f"{a}:{b}"}, invoker=user(tmp_path), hostname="h"
        )
        assert settings.kubeconfig == (a, b)
        assert settings.namespace == "team-a"
        assert settings.source_of("kubeconfig") == "environment KUBECONFIG"

    def test_ktpy_kubeconfig_beats_kubeconfig(self, tmp_path: Path) -> None:
        settings = resolve_settings(
            {},
            environ={"KUBECONFIG": "/a", "KTPY_KUBECONFIG": "~/k.yaml"},
            invoker=user(tmp_path),
            hostname="h",
        )
        assert settings.kubeconfig == (tmp_path / "k.yaml",)


class TestUnderSudo:
    def sudo_invoker(self, home: Path) -> Invoker:
        return Invoker("bob", 1001, 1001, home, via_sudo=True, is_root=True)

    def test_reads_the_invoking_users_files_and_ignores_roots_xdg(self, tmp_path: Path) -> None:
        home = tmp_path / "bob"
        write(home / ".config/ktpy/config.yaml", "image: bobs/image:1\n")
        write(home / ".kube/config", KUBECONFIG)
        write(tmp_path / "root-xdg/ktpy/config.yaml", "image: roots/image:1\n")
        settings = resolve_settings(
            {},
            environ={"XDG_CONFIG_HOME": str(tmp_path / "root-xdg"), "SUDO_USER": "bob"},
            invoker=self.sudo_invoker(home),
            hostname="lap",
        )
        assert settings.image == "bobs/image:1"
        assert settings.namespace == "team-a"
        assert settings.owner == "bob@lap"
        assert settings.journal_dir == ROOT_JOURNAL_DIR

    def test_journal_of_a_plain_user_is_in_their_state_dir(self, tmp_path: Path) -> None:
        settings = resolve_settings({}, environ={}, invoker=user(tmp_path), hostname="h")
        assert settings.journal_dir == tmp_path / ".local/state/ktpy/journal"
        assert str(settings.runtime_dir).endswith("ktpy-1000")

    def test_runtime_dir_follows_xdg_runtime_dir(self, tmp_path: Path) -> None:
        settings = resolve_settings(
            {}, environ={"XDG_RUNTIME_DIR": "/run/user/1000"}, invoker=user(tmp_path), hostname="h"
        )
        assert settings.runtime_dir == Path("/run/user/1000/ktpy")

    def test_config_path_under_sudo(self, tmp_path: Path) -> None:
        path = config_file_path(self.sudo_invoker(tmp_path), {"XDG_CONFIG_HOME": "/root/.config"})
        assert path == tmp_path / ".config/ktpy/config.yaml"


class TestBadValues:
    @pytest.mark.parametrize(
        ("environ", "message"),
        [
            ({"KTPY_HEARTBEAT_INTERVAL": "often"}, "KTPY_HEARTBEAT_INTERVAL"),
            ({"KTPY_HEARTBEAT_INTERVAL": "0s"}, "longer than zero"),
            ({"KTPY_SOCKS_PORT": "70000"}, "out of range"),
            ({"KTPY_NAMESPACE": "Bad_NS"}, "not a valid namespace"),
            ({"KTPY_LOG_FORMAT": "xml"}, "console, json"),
            ({"KTPY_DEBUG": "maybe"}, "not a boolean"),
            ({"KTPY_IMAGE": "  "}, "is not an image reference"),
            ({"KTPY_TUN_BUFFER": "lots"}, "not a size"),
            ({"KTPY_TUN_BUFFER": "512KiB"}, "outside 1MiB..4GiB"),
        ],
    )
    def test_bad_environment_values_name_their_source(
        self, tmp_path: Path, environ: dict[str, str], message: str
    ) -> None:
        with pytest.raises(ConfigProblem, match=message):
            resolve_settings({}, environ=environ, invoker=user(tmp_path), hostname="h")

    def test_stale_after_must_be_twice_the_interval(self, tmp_path: Path) -> None:
        environ = {"KTPY_HEARTBEAT_INTERVAL": "1m", "KTPY_STALE_AFTER": "90s"}
        with pytest.raises(ConfigProblem, match="at least twice"):
            resolve_settings({}, environ=environ, invoker=user(tmp_path), hostname="h")
        environ["KTPY_STALE_AFTER"] = "2m"
        settings = resolve_settings({}, environ=environ, invoker=user(tmp_path), hostname="h")
        assert settings.stale_after == timedelta(minutes=2)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("namespace: [a, b]\n", "single value"),
            ("- a\n- b\n", "mapping"),
            ("nmespace: typo\n", "unknown setting.*nmespace"),
            ("namespace: 'ok\n", "not valid YAML"),
        ],
    )
    def test_bad_config_files(self, tmp_path: Path, text: str, message: str) -> None:
        write(tmp_path / ".config/ktpy/config.yaml", text)
        with pytest.raises(ConfigProblem, match=message):
            resolve_settings({}, environ={}, invoker=user(tmp_path), hostname="h")

    def test_yaml_booleans_and_numbers_are_accepted(self, tmp_path: Path) -> None:
        write(tmp_path / ".config/ktpy/config.yaml", "debug: true\nsocks-port: 1081\n")
        settings = resolve_settings({}, environ={}, invoker=user(tmp_path), hostname="h")
        assert settings.debug is True
        assert settings.socks_port == 1081

    def test_the_tun_buffer_is_64_mib_unless_configured(self, tmp_path: Path) -> None:
        settings = resolve_settings({}, environ={}, invoker=user(tmp_path), hostname="h")
        assert settings.tun_buffer == 64 << 20
        environ = {"KTPY_TUN_BUFFER": "8MiB"}
        settings = resolve_settings({}, environ=environ, invoker=user(tmp_path), hostname="h")
        assert settings.tun_buffer == 8 << 20
        assert settings.source_of("tun_buffer") == "environment KTPY_TUN_BUFFER"

    def test_empty_config_file_is_fine(self, tmp_path: Path) -> None:
        write(tmp_path / ".config/ktpy/config.yaml", "")
        settings = resolve_settings({}, environ={}, invoker=user(tmp_path), hostname="h")
        assert settings.namespace == "default"


def test_the_unprivileged_identity_is_the_sudo_user_else_nobody(tmp_path: Path) -> None:
    """Who runs the code that parses network input when ktpy itself is root."""
    sudo = Invoker("bob", 1001, 1002, tmp_path, via_sudo=True, is_root=True)
    assert unprivileged_identity(sudo) == (1001, 1002)
    root = Invoker("root", 0, 0, tmp_path, via_sudo=False, is_root=True)
    nobody = pwd.struct_passwd(("nobody", "x", 65534, 65533, "", "/", "/bin/false"))
    assert unprivileged_identity(root, by_name=lambda name: nobody) == (65534, 65533)

    def missing(name: str) -> pwd.struct_passwd:
        raise KeyError(name)

    assert unprivileged_identity(root, by_name=missing) == (65534, 65534)
    assert unprivileged_identity(user(tmp_path)) is None  # not root: nothing to drop
