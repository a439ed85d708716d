//! What one execve takes (Linux's fs/exec.c): a process whose arguments and
//! environment are past it fails with E2BIG inside the guest, after its
//! container was reported created. The host checks first, with the
//! kernel's own arithmetic, so the error comes at create and says why, as
//! runc's does.

use oci_spec::runtime::{PosixRlimitType, Process};

use super::SpecError;

/// The most one argument or variable may take, its NUL included
/// (MAX_ARG_STRLEN: 32 pages).
const MAX_STRING: usize = 32 * 4096;
/// The kernel's floor for the whole (ARG_MAX: 32 pages).
const FLOOR: u64 = 32 * 4096;
/// Its ceiling: three quarters of _STK_LIM (8 MiB), the default stack limit.
const DEFAULT_STACK: u64 = 8 << 20;
const CEILING: u64 = DEFAULT_STACK / 4 * 3;

/// Refuses a process the guest kernel could not exec: one string past
/// MAX_ARG_STRLEN, or strings and their pointers past a quarter of the
/// process's stack limit (RLIMIT_STACK, else 8 MiB), as the kernel counts
/// them. A process it accepts is never refused.
pub fn check(process: &Process) -> Result<(), SpecError> {
    let args = process.args().as_deref().unwrap_or_default();
    let env = process.env().as_deref().unwrap_or_default();
    let strings = args.iter().chain(env);
    if let Some(long) = strings.clone().find(|s| s.len() + 1 > MAX_STRING) {
        let name: String = long.chars().take(24).collect();
        return Err(SpecError::ExecTooLarge(format!(
            "one argument or variable ({name:?}...) takes {} bytes, more than the {MAX_STRING} \
             the kernel takes for one",
            long.len() + 1
        )));
    }
    let stack = process
        .rlimits()
        .iter()
        .flatten()
        .find(|r| r.typ() == PosixRlimitType::RlimitStack)
        .map_or(DEFAULT_STACK, |r| r.soft());
    let limit = (stack / 4).clamp(FLOOR, CEILING);
    let pointers = (args.len().max(1) + env.len()) as u64 * 8;
    let total = pointers + strings.map(|s| s.len() as u64 + 1).sum::<u64>();
    if total > limit {
        return Err(SpecError::ExecTooLarge(format!(
            "the process's arguments and environment take {total} bytes, more than the \
             {limit} one exec takes (a quarter of its stack limit)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(args: Vec<String>, env: Vec<String>, stack: Option<u64>) -> Process {
        let mut process = Process::default();
        process.set_args(Some(args));
        process.set_env(Some(env));
        let rlimits = stack.map(|soft| {
            serde_json::from_value(serde_json::json!([
                {"type": "RLIMIT_STACK", "soft": soft, "hard": soft}
            ]))
            .unwrap()
        });
        process.set_rlimits(rlimits);
        process
    }

    fn vars(count: usize, size: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("V{i}={}", "x".repeat(size)))
            .collect()
    }

    #[test]
    fn what_the_kernel_takes_passes() {
        let args = vec!["sh".to_string(), "a".repeat(100 << 10)];
        check(&process(args, vars(10, 60 << 10), None)).unwrap();
        // Just under 2 MiB in all, with the default 8 MiB stack.
        check(&process(vec!["sh".into()], vars(32, 65000), None)).unwrap();
    }

    #[test]
    fn too_much_in_all_is_too_long() {
        let err = check(&process(vec!["true".into()], vars(40, 60 << 10), None)).unwrap_err();
        assert!(err.to_string().contains("argument list too long"), "{err}");
        // A bigger stack limit takes more, up to 6 MiB.
        check(&process(
            vec!["true".into()],
            vars(40, 60 << 10),
            Some(16 << 20),
        ))
        .unwrap();
        assert!(check(&process(
            vec!["true".into()],
            vars(120, 60 << 10),
            Some(u64::MAX)
        ))
        .is_err());
        // A smaller one takes less, down to 128 KiB.
        assert!(check(&process(
            vec!["true".into()],
            vars(3, 60 << 10),
            Some(512 << 10)
        ))
        .is_err());
    }

    #[test]
    fn one_string_past_128_kib_is_too_long() {
        let err = check(&process(
            vec!["sh".into(), "a".repeat(MAX_STRING)],
            vec![],
            None,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("argument list too long"), "{err}");
        let fits = "a".repeat(MAX_STRING - 1);
        check(&process(vec!["sh".into(), fits], vec![], None)).unwrap();
    }
}
