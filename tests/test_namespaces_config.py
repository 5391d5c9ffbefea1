"""Unit tests of the options issue 19 added to chloed.config: ``[namespaces.NAME]``
resolved per channel, the history policy, and the public keys of connection
tokens."""

from __future__ import annotations

import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chloed import config
from chloed.config import ChannelOptions, Config, ConfigError, Namespace


def refused(values: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config.from_mapping(values)
    return info.value


def load(tmp_path, text: str) -> Config:
    path = tmp_path / "chloe.toml"
    path.write_text(text, encoding="utf-8")
    return config.load(str(path))


CHAT = """
history_size = 7
history_ttl = 3600

[namespaces.chat]
history_size = 1000
client_publish = true
max_message_bytes = 4096

[namespaces.team]
presence = true
require_token = true
history_ttl = 5
allowed_origins = ["https://team.example.com/"]

[namespaces."a.b"]
"""


def test_namespaces_read_from_a_file(tmp_path):
    """Each [namespaces.NAME] table keeps what it sets, and nothing else, in
    the file's order."""
    cfg = load(tmp_path, CHAT)
    assert cfg.namespaces == (
        Namespace("chat", history_size=1000, client_publish=True, max_message_bytes=4096),
        Namespace(
            "team", history_ttl=5.0, presence=True, require_token=True,
            allowed_origins=("https://team.example.com",),
        ),
        Namespace("a.b"),
    )


def test_channel_options_of_a_namespace(tmp_path):
    """A channel NS:rest takes its namespace's options over the globals."""
    cfg = load(tmp_path, CHAT)
    assert cfg.channel_options("chat:room-1") == ChannelOptions(
        namespace="chat", history_size=1000, history_ttl=3600.0, presence=False, client_publish=True,
        require_token=False, max_message_bytes=4096, allowed_origins=("*",),
    )
    assert cfg.channel_options("team:x:y") == ChannelOptions(
        namespace="team", history_size=7, history_ttl=5.0, presence=True, client_publish=False,
        require_token=True, max_message_bytes=65536, allowed_origins=("https://team.example.com",),
    )
    assert cfg.channel_options("a.b:c").namespace == "a.b"


def test_channel_options_without_a_namespace(tmp_path):
    """A channel without ':' has the globals: one object, the same every time."""
    cfg = load(tmp_path, CHAT)
    options = cfg.channel_options("lobby")
    assert options == ChannelOptions(
        namespace=None, history_size=7, history_ttl=3600.0, presence=False, client_publish=False,
        require_token=False, max_message_bytes=65536, allowed_origins=("*",),
    )
    assert cfg.channel_options("presence-lobby") is options


def test_unknown_namespace_is_none(tmp_path):
    """Once namespaces are configured, a channel whose part before the first
    ':' is none of them has no options (the caller answers invalid_channel);
    the namespace is the whole part before the first ':' and case counts."""
    cfg = load(tmp_path, CHAT)
    assert [cfg.channel_options(n) for n in ("news:1", "Chat:1", "cha:t", ":x", "#u:alice")] == [None] * 5
    assert cfg.channel_options("chat:") is not None


def test_no_namespace_configured_every_channel_is_global():
    """Without namespaces a ':' in a channel's name means nothing: the globals."""
    cfg = Config(client_publish=True)
    options = cfg.channel_options("news:1")
    assert options is cfg.channel_options("lobby")
    assert (options.namespace, options.client_publish) == (None, True)


def test_unset_options_follow_the_globals_given_later(tmp_path):
    """A flag that changes a global changes the namespaces that did not set it."""
    cfg = config.from_mapping({"client_publish": True, "history_size": 3}, load(tmp_path, CHAT))
    assert (cfg.channel_options("team:1").client_publish, cfg.channel_options("team:1").history_size) == (True, 3)
    assert cfg.channel_options("chat:1").history_size == 1000


def test_policy(tmp_path):
    """History is kept per the channel's namespace, the globals' for a name
    without one (or an unknown one), and session_grace long for a user channel."""
    cfg = config.from_mapping({"session_grace": 45}, load(tmp_path, CHAT))
    assert cfg.policy("chat:1") == (1000, 3600.0)
    assert cfg.policy("team:1") == (7, 5.0)
    assert cfg.policy("lobby") == (7, 3600.0)
    assert cfg.policy("news:1") == (7, 3600.0)
    assert cfg.policy("#u:alice") == (7, 45.0)
    assert cfg.policy("#u:chat:x") == (7, 45.0)
    assert Config().policy("#u:bob") == (100, 30.0)


def test_every_mistake_is_reported_one_line_each(tmp_path):
    """A file with several mistakes in its namespaces names each of them,
    one line each (namespaces.NAME.option), in one error."""
    with pytest.raises(ConfigError) as info:
        load(
            tmp_path,
            """
max_message_bytes = 1000

[namespaces.chat]
history_size = -1
presense = true
max_message_bytes = 2000

[namespaces."chloe.x"]
presence = "yes"

[namespaces."bad name"]

[namespaces.ok]
history_ttl = 60
allowed_origins = ["example.com"]
require_token = 1
client_publish = 0
""",
        )
    lines = str(info.value).splitlines()
    assert [line.partition(": ")[0] for line in lines] == [
        "namespaces.chat.history_size",
        "namespaces.chat.presense",
        "namespaces.chloe.x",
        "namespaces.chloe.x.presence",
        "namespaces.bad name",
        "namespaces.ok.allowed_origins",
        "namespaces.ok.require_token",
        "namespaces.ok.client_publish",
        "namespaces.chat.max_message_bytes",
    ]
    assert info.value.option == "namespaces.chat.history_size"
    assert "unknown option" in lines[1]
    assert "at most max_message_bytes (1000)" in lines[-1]


def test_one_mistake_names_its_option():
    """A single mistake is one line naming namespaces.NAME.option, as any option's error."""
    error = refused({"namespaces": {"chat": {"history_ttl": "long"}}})
    assert error.option == "namespaces.chat.history_ttl"
    assert str(error).startswith("namespaces.chat.history_ttl: ") and "\n" not in str(error)


@pytest.mark.parametrize(
    "name",
    ["", "a:b", "x" * 65, "chloe.", "chloe.status", "é", "a b", "a~b", "#u"],
)
def test_bad_namespace_names(name):
    """A namespace is 1..64 of the channel alphabet without ':', and not chloe.*."""
    assert refused({"namespaces": {name: {}}}).option == f"namespaces.{name}"


@pytest.mark.parametrize("name", ["a", "x" * 64, "chat_1", "a.b", "user@host", "k=v", "-", "chloe"])
def test_good_namespace_names(name):
    """Any name of the channel alphabet without ':' is a namespace."""
    assert config.from_mapping({"namespaces": {name: {}}}).namespaces == (Namespace(name),)


@pytest.mark.parametrize(
    "option, value",
    [
        ("history_size", 1.5),
        ("history_size", True),
        ("history_ttl", -1),
        ("history_ttl", float("nan")),
        ("presence", 1),
        ("client_publish", "true"),
        ("require_token", None),
        ("max_message_bytes", 63),
        ("max_message_bytes", 65537),
        ("max_message_bytes", 100.0),
        ("allowed_origins", []),
        ("allowed_origins", ["ftp://example.com"]),
        ("channels", ["a"]),
    ],
)
def test_bad_namespace_values(option, value):
    """A namespace's option is held to its global's rules (and max_message_bytes
    to the global one), naming namespaces.NAME.option."""
    assert refused({"namespaces": {"n": {option: value}}}).option == f"namespaces.n.{option}"


def test_namespace_limit_checked_against_the_final_global():
    """max_message_bytes of a namespace is checked against the global as it
    ends up, whichever order they come in, and when a later mapping lowers it."""
    values = {"namespaces": {"n": {"max_message_bytes": 2000}}, "max_message_bytes": 1000}
    assert refused(values).option == "namespaces.n.max_message_bytes"
    cfg = config.from_mapping({"namespaces": {"n": {"max_message_bytes": 2000}}, "max_message_bytes": 2000})
    assert cfg.channel_options("n:1").max_message_bytes == 2000
    with pytest.raises(ConfigError) as info:
        config.from_mapping({"max_message_bytes": 1999}, cfg)
    assert info.value.option == "namespaces.n.max_message_bytes"


# -- token_public_key


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def pem(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwk(key, **extra) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), **extra}


def numbers(keys):
    """What identifies each (algorithm, key) pair, for comparing."""
    return [(alg, key.public_numbers()) for alg, key in keys]


def token_config(tmp_path, content: bytes | str, name: str = "keys") -> Config:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return config.from_mapping({"token_public_key": str(path)})


def test_no_public_key_no_keys():
    """Without token_public_key there are no public keys (HS256 only)."""
    assert Config().public_keys() == ()
    assert config.from_mapping({"token_public_key": ""}).token_public_key is None


def test_pem_public_keys(tmp_path, rsa_key, ec_key):
    """A PEM file of an RSA and a P-256 key (a rotation) gives RS256 and ES256,
    in the file's order; the path is kept as given."""
    cfg = token_config(tmp_path, pem(rsa_key) + b"\n" + pem(ec_key))
    assert cfg.token_public_key == str(tmp_path / "keys")
    assert numbers(cfg.public_keys()) == numbers(
        [("RS256", rsa_key.public_key()), ("ES256", ec_key.public_key())]
    )


def test_public_keys_verify_tokens(tmp_path, rsa_key, ec_key):
    """The keys loaded are what PyJWT verifies a token with."""
    cfg = token_config(tmp_path, pem(rsa_key) + pem(ec_key))
    (rs, rs_key), (es, es_key) = cfg.public_keys()
    assert jwt.decode(jwt.encode({"sub": "a"}, rsa_key, algorithm="RS256"), rs_key, algorithms=[rs]) == {"sub": "a"}
    assert jwt.decode(jwt.encode({"sub": "b"}, ec_key, algorithm="ES256"), es_key, algorithms=[es]) == {"sub": "b"}


def test_public_keys_are_read_once(tmp_path, rsa_key):
    """public_keys() reads the file once: the same tuple every call, even once the file is gone."""
    cfg = token_config(tmp_path, pem(rsa_key))
    keys = cfg.public_keys()
    (tmp_path / "keys").unlink()
    assert cfg.public_keys() is keys


def test_jwks_file(tmp_path, rsa_key, ec_key):
    """A JWKS gives its signing keys; an encryption key, and a key of an
    algorithm Chloe does not take, are left out."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    document = {
        "keys": [
            jwk(rsa_key, kid="r1", use="sig", alg="RS256"),
            jwk(other, kid="e1", use="enc", alg="RSA-OAEP"),
            jwk(other, kid="r2", alg="RS512"),
            jwk(ec_key, kid="e2"),
        ]
    }
    cfg = token_config(tmp_path, json.dumps(document), "jwks.json")
    assert numbers(cfg.public_keys()) == numbers(
        [("RS256", rsa_key.public_key()), ("ES256", ec_key.public_key())]
    )


def test_single_jwk_file(tmp_path, ec_key):
    """A file of one JWK (not in a set) is read as a set of one."""
    cfg = token_config(tmp_path, json.dumps(jwk(ec_key)))
    assert numbers(cfg.public_keys()) == numbers([("ES256", ec_key.public_key())])


def private_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    "content, why",
    [
        (b"", "neither PEM nor JWKS"),
        (b"not a key\n", "neither PEM nor JWKS"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "does not parse"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JWKS"),
        (b'{"keys": {}}', "not a JWKS"),
        (b'{"keys": []}', "holds no RS256 or ES256"),
        (b'{"keys": [5]}', "key 0 is not a JSON object"),
        (b'{"keys": [{"kty": "RSA", "n": "AQAB"}]}', "key 0"),
        (b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "secret key"),
        (b'{"keys": [{"kty": "nope"}]}', "key 0"),
    ],
)
def test_bad_key_files(tmp_path, content, why):
    """A key file that does not parse or holds no usable key stops start-up,
    naming token_public_key and saying why."""
    path = tmp_path / "keys"
    path.write_bytes(content)
    error = refused({"token_public_key": str(path)})
    assert error.option == "token_public_key" and why in str(error), str(error)


def test_private_keys_are_refused(tmp_path, rsa_key, ec_key):
    """A private key (PEM or JWK), given by mistake, is refused: chloed needs
    only the public part."""
    for content in (private_pem(rsa_key), json.dumps({"keys": [jwt.algorithms.ECAlgorithm.to_jwk(ec_key, as_dict=True)]}).encode()):
        path = tmp_path / "keys"
        path.write_bytes(content)
        error = refused({"token_public_key": str(path)})
        assert error.option == "token_public_key" and "private" in str(error)


def test_other_curves_are_refused(tmp_path):
    """A P-384 key is not an ES256 key: refused, saying which keys are supported."""
    error = refused({"token_public_key": str(write_key(tmp_path, pem(ec.generate_private_key(ec.SECP384R1()))))})
    assert "P-256 (ES256)" in str(error)


def write_key(tmp_path, content: bytes):
    path = tmp_path / "keys"
    path.write_bytes(content)
    return path


def test_unreadable_key_file(tmp_path):
    """A key file that cannot be read (a directory) is refused, naming the path."""
    error = refused({"token_public_key": str(tmp_path)})
    assert error.option == "token_public_key" and str(tmp_path) in str(error)


def test_certificate_gives_its_key(tmp_path, rsa_key):
    """A PEM certificate is read for its public key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    now = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(rsa_key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )
    cfg = token_config(tmp_path, cert.public_bytes(serialization.Encoding.PEM))
    assert numbers(cfg.public_keys()) == numbers([("RS256", rsa_key.public_key())])
