//! Keys and certificates made by the openssl CLI, an implementation independent of ours,
//! and Python's `ssl` HTTPS servers that use them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A child process killed (and reaped) when this goes out of scope.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `openssl args` in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// In `dir`: a self-signed P-256 certificate for 127.0.0.1 and localhost, written as
/// `{name}.crt` and `{name}.key`.
pub fn self_signed(dir: &Path, name: &str) -> Result<()> {
    let (key, crt, subject) = (
        format!("{name}.key"),
        format!("{name}.crt"),
        format!("/CN=postern-{name}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &subject,
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            &key,
            "-out",
            &crt,
        ],
    )
}

/// In `dir`: a test CA (`ca.pem`, `ca.key`, which no system trusts), a server
/// certificate it signed for 127.0.0.1 (`server.pem`, `server.key`) and a client
/// certificate (`client.pem`, `client.key`, 0600).
pub fn make_pki(dir: &Path) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=postern test CA",
        ],
    )?;
    issue(dir, "server", "subjectAltName=IP:127.0.0.1")?;
    client_certificate(dir, "client")
}

/// In `dir`, beside [`make_pki`]'s CA: a client certificate `{name}.pem` for
/// `CN=postern-{name}`, signed by that CA, and its key `{name}.key` (0600).
pub fn client_certificate(dir: &Path, name: &str) -> Result<()> {
    issue(dir, name, "extendedKeyUsage=clientAuth")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join(format!("{name}.key")),
        std::fs::Permissions::from_mode(0o600),
    )?;
    Ok(())
}

/// `{name}.pem` and `{name}.key` for `CN=postern-{name}`, signed by `ca.pem` with `ext`.
fn issue(dir: &Path, name: &str, ext: &str) -> Result<()> {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let (subject, extfile) = (format!("/CN=postern-{name}"), format!("{name}.ext"));
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
            &subject,
        ],
    )?;
    std::fs::write(dir.join(&extfile), ext)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ],
    )
}

/// For [`python_https`]: answers a GET `{"ok": true, "client": <the client certificate's
/// CN or null>}` and a POST as a token endpoint; requires a client certificate signed by
/// `argv[4]` when that is not `-`.
pub const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys, json
cert, key, port, client_ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        peer = self.connection.getpeercert()
        body = json.dumps({"ok": True, "client": dict(x[0] for x in peer["subject"])["commonName"] if peer else None}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b'{"access_token":"from-the-token-endpoint","expires_in":600}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
if client_ca != "-":
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(client_ca)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

/// Runs the Python `script` in `dir` as `python3 -c script server.pem server.key PORT
/// extra…` with PORT 0, so the script binds a port of the system's choosing (one picked
/// free beforehand could be taken by another test first); returns once it listens, with
/// the port it bound, read from /proc.
pub fn python_https(dir: &Path, script: &str, extra: &[&str]) -> Result<(KillOnDrop, u16)> {
    let child = Command::new("python3")
        .args(["-c", script, "server.pem", "server.key", "0"])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("python3")?;
    let mut guard = KillOnDrop(child);
    let ports = crate::harness::wait_listening(&mut guard.0, Duration::from_secs(10))
        .context("the https server")?
        .context("the https server exited before it listened")?;
    match ports.as_slice() {
        [port] => Ok((guard, *port)),
        _ => bail!("the https server listens on {ports:?}, not on one port"),
    }
}

/// An RSA 2048 key in three files of `dir`, as openssl writes them: `rsa.pem` (PKCS#8),
/// `rsa1.pem` (PKCS#1, "traditional") and `rsa-pub.pem` (SubjectPublicKeyInfo).
pub fn rsa_forms(dir: &Path) -> Result<()> {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.pem",
        ],
    )?;
    openssl(
        dir,
        &["rsa", "-in", "rsa.pem", "-traditional", "-out", "rsa1.pem"],
    )?;
    openssl(
        dir,
        &["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa-pub.pem"],
    )
}

/// An EC P-256 key in `dir/ec.pem` (SEC1, as `openssl ecparam -genkey` writes it):
/// (private PEM, public PEM).
pub fn ec256(dir: &Path) -> Result<(String, String)> {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.pem",
        ],
    )?;
    let public = Command::new("openssl")
        .args(["ec", "-pubout", "-in", "ec.pem"])
        .current_dir(dir)
        .output()
        .context("openssl")?;
    if !public.status.success() {
        bail!("openssl ec -pubout failed");
    }
    Ok((
        std::fs::read_to_string(dir.join("ec.pem"))?,
        String::from_utf8(public.stdout)?,
    ))
}

/// In `dir`: a self-signed P-256 certificate for 127.0.0.1, valid from `from_days` to
/// `to_days` days from now (either may be past), written by Python's `cryptography` as
/// `{name}.crt` and `{name}.key`; openssl 3.0's `req` cannot backdate one.
pub fn dated_self_signed(dir: &Path, name: &str, from_days: i64, to_days: i64) -> Result<()> {
    // Written for cryptography 3.1 and later (Debian's 38 as well as pip's).
    const SCRIPT: &str = r#"
import datetime, ipaddress, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
name, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
key = ec.generate_private_key(ec.SECP256R1())
subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "postern-" + name)])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=start))
        .not_valid_after(now + datetime.timedelta(days=end))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256()))
open(name + ".crt", "wb").write(cert.public_bytes(serialization.Encoding.PEM))
open(name + ".key", "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            SCRIPT,
            name,
            &from_days.to_string(),
            &to_days.to_string(),
        ])
        .current_dir(dir)
        .output()
        .context("python3 (with the cryptography package: .ci/run installs it)")?;
    if !out.status.success() {
        bail!(
            "making {name}.crt: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A PEM certificate's notAfter as Unix seconds, as Python's `cryptography` reads it.
pub fn not_after_unix(cert: &Path) -> Result<i64> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, datetime; from cryptography import x509; \
             c = x509.load_pem_x509_certificate(open(sys.argv[1], 'rb').read()); \
             end = getattr(c, 'not_valid_after_utc', None) or \
                 c.not_valid_after.replace(tzinfo=datetime.timezone.utc); \
             print(int(end.timestamp()))",
        ])
        .arg(cert)
        .output()
        .context("python3")?;
    if !out.status.success() {
        bail!(
            "reading {}: {}",
            cert.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}
