//! What ships beside the binaries: the systemd units are hardened and valid
//! against an installed copy of the binary. `systemd-analyze` works offline
//! here (no running systemd is needed); `.ci/run` installs it.

mod common;

use std::process::{Command, Stdio};

const SERVER: &str = env!("CARGO_BIN_EXE_echo-server");

fn systemd_analyze() -> Option<&'static str> {
    common::peer("systemd-analyze", &["--version"], "systemd").then_some("systemd-analyze")
}

/// The units with `ExecStart` pointing at this build's binary, as if it
/// had been installed.
fn installed_units() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("echo-server");
    std::fs::copy(SERVER, &binary).unwrap();
    let service = include_str!("../deploy/echod.service")
        .replace("/usr/local/bin/echo-server", &binary.display().to_string());
    std::fs::write(dir.path().join("echod.service"), service).unwrap();
    std::fs::write(
        dir.path().join("echod.socket"),
        include_str!("../deploy/echod.socket"),
    )
    .unwrap();
    dir
}

#[test]
fn the_systemd_unit_is_hardened_to_an_exposure_of_at_most_2() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let units = installed_units();
    let output = Command::new(analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(units.path().join("echod.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let exposure: f64 = text
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for echod.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure} is over 2.0:\n{text}");
}

#[test]
fn the_systemd_units_verify_against_an_installed_binary() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let units = installed_units();
    let output = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(units.path().join("echod.service"))
        .arg(units.path().join("echod.socket"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("echod"),
        "warnings about the units:\n{stderr}"
    );
}

/// `kubernetes-validate` (PyPI; `.ci/run` installs it into
/// target/ci-venv), or one on PATH. Skips loudly elsewhere, never in CI.
fn kubernetes_validate() -> Option<String> {
    let venv = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/ci-venv/bin/kubernetes-validate"
    );
    let candidates = [
        std::env::var("ECHOD_KUBERNETES_VALIDATE").ok(),
        Some(venv.to_owned()),
        Some("kubernetes-validate".to_owned()),
    ];
    for candidate in candidates.into_iter().flatten() {
        let found = Command::new(&candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if found {
            return Some(candidate);
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "kubernetes-validate is not installed (.ci/run installs it into target/ci-venv)"
    );
    eprintln!("SKIPPING: kubernetes-validate is not installed (pip install kubernetes-validate)");
    None
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let Some(validate) = kubernetes_validate() else {
        return;
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    let output = Command::new(validate)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "manifests do not validate:\n{text}"
    );
    assert_eq!(
        text.matches(" passed for resource ").count(),
        files.len(),
        "{text}"
    );
}

/// What the Deployment promises operators: probes on the admin endpoint,
/// a drain delay instead of a preStop sleep, a grace period above drain
/// delay + shutdown grace, a locked-down container.
#[test]
fn the_deployment_probes_drains_and_runs_locked_down() {
    let deployment = include_str!("../deploy/kubernetes/deployment.yaml");
    for needed in [
        "path: /readyz",
        "path: /livez",
        "name: ECHOD_DRAIN_DELAY",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "fieldPath: metadata.name",
    ] {
        assert!(
            deployment.contains(needed),
            "deployment.yaml lacks {needed:?}"
        );
    }
    assert!(
        !deployment.contains("preStop:"),
        "a preStop sleep cannot run in a scratch image"
    );
    // A number on the key's line (`key: 30`), or on the `value:` line after it.
    let number = |key: &str| -> u64 {
        let mut lines = deployment.lines().skip_while(|line| !line.contains(key));
        let line = lines.next().unwrap_or_else(|| panic!("no {key}"));
        let after = line.split(key).nth(1).unwrap().trim();
        let text = if after.is_empty() {
            lines
                .next()
                .unwrap()
                .trim()
                .trim_start_matches("value:")
                .trim()
        } else {
            after
        };
        text.trim_matches('"')
            .parse()
            .unwrap_or_else(|_| panic!("{key}: {text:?}"))
    };
    let grace = number("terminationGracePeriodSeconds:");
    let drain = number("name: ECHOD_DRAIN_DELAY");
    let shutdown = number("name: ECHOD_SHUTDOWN_GRACE");
    assert!(
        grace > drain + shutdown,
        "terminationGracePeriodSeconds {grace} <= {drain} + {shutdown}"
    );
}
