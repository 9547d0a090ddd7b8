//! The PKCS#11 fault shim (`tests/fault-shim/shim.c`): built once per test process with the
//! system C compiler, pointed at one real module, and driven by files in its control
//! directory. Tests that flip faults hold [`Faults`] (one at a time).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{env, hermetic_command, manifest_dir};

/// Where Debian's libp11-kit-dev puts the standard PKCS#11 header.
const P11KIT_INCLUDE: &str = "/usr/include/p11-kit-1";

/// The built shim: its library and its control directory.
pub struct Shim {
    pub lib: PathBuf,
    pub control: PathBuf,
    target: PathBuf,
}

static SHIM: OnceLock<Result<Shim, String>> = OnceLock::new();
/// Serialises the tests: the control directory is process-wide.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Builds the shim once per process and points it at the module `target`. `Err` means
/// "skip".
fn build_shim(target: &Path) -> Result<Shim, String> {
    // Sets SOFTHSM2_CONF and creates the token before any module is loaded.
    let env = env();
    let target = target.to_path_buf();
    let src = manifest_dir().join("tests/fault-shim/shim.c");
    let out = env.dir.join("fault-shim");
    let control = out.join("control");
    std::fs::create_dir_all(&control).unwrap();
    let lib = out.join("libp11kms-shim.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());

    let built = hermetic_command(&cc, &out)
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output();
    match built {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "no C compiler `{cc}` to build the PKCS#11 fault shim (apt-get install gcc)"
            ))
        }
        Err(e) => panic!("running {cc}: {e}"),
        Ok(o) => assert!(
            o.status.success(),
            "the fault shim does not compile:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
    }

    // The function-list layout must match the standard exactly; check it when a standard
    // header is at hand (compile-time asserts only, nothing is produced).
    if Path::new(P11KIT_INCLUDE).join("p11-kit/pkcs11.h").exists() {
        let o = hermetic_command(&cc, &out)
            .args(["-fsyntax-only", "-DP11KMS_SHIM_CHECK_LAYOUT"])
            .arg(format!("-I{P11KIT_INCLUDE}"))
            .arg(&src)
            .output()
            .expect("run the C compiler");
        assert!(
            o.status.success(),
            "the shim's CK_FUNCTION_LIST layout differs from the standard header:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    } else {
        eprintln!(
            "note: {P11KIT_INCLUDE}/p11-kit/pkcs11.h absent (libp11-kit-dev); the shim's \
             function-list layout was not cross-checked"
        );
    }

    // Read by the shim when the module is first loaded, which has not happened yet.
    std::env::set_var("P11KMS_SHIM_TARGET", &target);
    std::env::set_var("P11KMS_SHIM_CONTROL", &control);
    Ok(Shim {
        lib,
        control,
        target,
    })
}

impl Shim {
    /// Creates control file `name` (empty: the default fault).
    pub fn set(&self, name: &str) {
        std::fs::write(self.control.join(name), b"").unwrap();
    }

    /// Makes `function` fail with return value `rv`.
    pub fn fail_with(&self, function: &str, rv: u64) {
        std::fs::write(
            self.control.join(format!("fail_{function}")),
            format!("{rv:#x}"),
        )
        .unwrap();
    }

    /// A burst of `n` faults: the next `n` calls of `function` fail with `rv`.
    pub fn burst(&self, function: &str, rv: u64, n: u32) {
        std::fs::write(
            self.control.join(format!("burst_{function}")),
            format!("{rv:#x} {n}"),
        )
        .unwrap();
    }

    /// Makes every call of `function` sleep `ms` milliseconds first (a stalled device).
    pub fn delay(&self, function: &str, ms: u64) {
        std::fs::write(
            self.control.join(format!("delay_{function}")),
            ms.to_string(),
        )
        .unwrap();
    }

    /// Faults the shim has injected by bursts so far (since the last `clear`).
    pub fn injected(&self) -> usize {
        std::fs::read_to_string(self.control.join("injected.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    pub fn unset(&self, name: &str) {
        let _ = std::fs::remove_file(self.control.join(name));
    }

    pub fn is_set(&self, name: &str) -> bool {
        self.control.join(name).exists()
    }

    /// Removes every control file: a healthy device.
    pub fn clear(&self) {
        for entry in std::fs::read_dir(&self.control).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }
}

/// Exclusive use of the fault controls for one test, starting (and ending) healthy.
/// The shim, held by one test at a time (the control directory is process-wide); its
/// faults are cleared when dropped.
pub struct Faults {
    shim: &'static Shim,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Faults {
    type Target = Shim;
    fn deref(&self) -> &Shim {
        self.shim
    }
}

impl Drop for Faults {
    fn drop(&mut self) {
        self.shim.clear();
    }
}

/// `None` (after printing why) when the shim cannot be built here.
/// The shim in front of `target` (the same target for every call in a process), for one
/// test at a time; `None` (after printing why) when no C compiler can build it.
pub async fn faults_on(target: &Path) -> Option<Faults> {
    let shim = match SHIM.get_or_init(|| build_shim(target)) {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return None;
        }
    };
    assert_eq!(shim.target, target, "one shim target per test process");
    let serial = SERIAL.lock().await;
    shim.clear();
    Some(Faults {
        shim,
        _serial: serial,
    })
}
