//! The container's seccomp profile for exec'd processes.
//!
//! libcontainer's tenant builder (`as_tenant`) rebuilds the spec's `linux`
//! from the namespaces, cgroups path, personality and time offsets only, so
//! a process it starts runs without the container's `linux.seccomp`. runc
//! gives an exec'd process that profile; so does the agent, with an
//! [`Executor`]: it runs in the new process once libcontainer has set its
//! namespaces, user, capabilities and no_new_privs, loads the filter, and
//! execs as libcontainer's default executor does.
//!
//! Loading a filter takes no_new_privs or CAP_SYS_ADMIN. With no_new_privs
//! the executor just loads it, as late as runc does. Without, libcontainer
//! has dropped CAP_SYS_ADMIN by then unless the process may keep it, so the
//! process given to libcontainer keeps it permitted, and the executor raises
//! it, loads the filter, and drops it again: what the process holds when it
//! execs is what the exec's spec asked for. It stays out of the bounding
//! set, where libcontainer has already put exactly the spec's.
//!
//! One difference remains: without no_new_privs runc loads the filter
//! before it sets the user and capabilities, so those calls go through it
//! too; here they are made already. Only a profile that denies them tells
//! the two apart, and runc would fail such an exec.

use libcontainer::seccomp::SeccompError;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{Capability as SpecCapability, LinuxSeccomp, Process, Spec};

#[derive(Debug, thiserror::Error)]
pub enum ExecSeccompError {
    /// runc hands an exec'd process's notify fd to the seccomp agent from
    /// outside the container; the filter here is loaded inside it, after
    /// pivot_root, where the agent's socket is out of reach.
    #[error(
        "the container's seccomp profile passes syscalls to a seccomp agent \
         (SCMP_ACT_NOTIFY), which Hull does not support for exec'd processes"
    )]
    Notify,
    #[error("loading the container's seccomp profile")]
    Load(#[source] SeccompError),
    #[error("{0} CAP_SYS_ADMIN around loading the container's seccomp profile")]
    Capability(&'static str, #[source] caps::errors::CapsError),
}

/// How an exec'd process gets the container's seccomp profile.
pub struct ExecSeccomp {
    /// The process for libcontainer: the exec's, with CAP_SYS_ADMIN kept
    /// permitted if loading the filter needs it.
    pub process: Process,
    pub executor: SeccompExecutor,
}

/// Plans an exec of `process` in the container of `container`; `None` if
/// the container has no seccomp profile.
pub fn plan(container: &Spec, process: &Process) -> Result<Option<ExecSeccomp>, ExecSeccompError> {
    let Some(profile) = container.linux().as_ref().and_then(|l| l.seccomp().clone()) else {
        return Ok(None);
    };
    if libcontainer::seccomp::is_notify(&profile) {
        return Err(ExecSeccompError::Notify);
    }
    let mut process = process.clone();
    let privilege = if process.no_new_privileges() == Some(true) {
        LoadPrivilege::NoNewPrivs
    } else {
        LoadPrivilege::SysAdmin {
            drop_after: keep_sys_admin_permitted(&mut process),
        }
    };
    Ok(Some(ExecSeccomp {
        process,
        executor: SeccompExecutor { profile, privilege },
    }))
}

/// Adds CAP_SYS_ADMIN to the permitted set libcontainer leaves `process`,
/// if it would not be there; says whether it was added. Without a
/// permitted set libcontainer leaves the process all it has.
fn keep_sys_admin_permitted(process: &mut Process) -> bool {
    let Some(mut capabilities) = process.capabilities().clone() else {
        return false;
    };
    let Some(mut permitted) = capabilities.permitted().clone() else {
        return false;
    };
    if !permitted.insert(SpecCapability::SysAdmin) {
        return false;
    }
    capabilities.set_permitted(Some(permitted));
    process.set_capabilities(Some(capabilities));
    true
}

/// What lets the executor load a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoadPrivilege {
    /// The process has no_new_privs.
    NoNewPrivs,
    /// CAP_SYS_ADMIN, permitted: raised for the load, then dropped from
    /// the permitted set too if the spec did not permit it (`drop_after`).
    SysAdmin { drop_after: bool },
}

/// Loads the container's seccomp profile, then runs the process as
/// libcontainer's default executor does.
#[derive(Clone)]
pub struct SeccompExecutor {
    profile: LinuxSeccomp,
    privilege: LoadPrivilege,
}

impl SeccompExecutor {
    fn load(&self) -> Result<(), ExecSeccompError> {
        use caps::{CapSet, Capability};
        let LoadPrivilege::SysAdmin { drop_after } = self.privilege else {
            return load_profile(&self.profile);
        };
        let effective = caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN)
            .map_err(|e| ExecSeccompError::Capability("reading", e))?;
        caps::raise(None, CapSet::Effective, Capability::CAP_SYS_ADMIN)
            .map_err(|e| ExecSeccompError::Capability("raising", e))?;
        load_profile(&self.profile)?;
        if !effective {
            caps::drop(None, CapSet::Effective, Capability::CAP_SYS_ADMIN)
                .map_err(|e| ExecSeccompError::Capability("dropping", e))?;
        }
        if drop_after {
            caps::drop(None, CapSet::Permitted, Capability::CAP_SYS_ADMIN)
                .map_err(|e| ExecSeccompError::Capability("dropping", e))?;
        }
        Ok(())
    }
}

fn load_profile(profile: &LinuxSeccomp) -> Result<(), ExecSeccompError> {
    // plan() refused notifying profiles: there is no notify fd to pass on.
    libcontainer::seccomp::initialize_seccomp(profile)
        .map(|_no_notify_fd| ())
        .map_err(ExecSeccompError::Load)
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // libcontainer reports an executor's error by its message alone.
        self.load()
            .map_err(|err| ExecutorError::Other(format!("{:#}", anyhow::Error::from(err))))?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(seccomp: serde_json::Value) -> Spec {
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().unwrap();
        linux.set_seccomp(Some(serde_json::from_value(seccomp).unwrap()));
        spec.set_linux(Some(linux));
        spec
    }

    fn errno_profile() -> serde_json::Value {
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}]
        })
    }

    /// An exec process: `true` as root, with `fields` added.
    fn process(fields: serde_json::Value) -> Process {
        let mut process = serde_json::json!({
            "args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}
        });
        for (key, value) in fields.as_object().unwrap() {
            process[key] = value.clone();
        }
        serde_json::from_value(process).unwrap()
    }

    fn permitted(process: &Process) -> Vec<SpecCapability> {
        let mut caps: Vec<_> = process
            .capabilities()
            .as_ref()
            .unwrap()
            .permitted()
            .clone()
            .unwrap()
            .into_iter()
            .collect();
        caps.sort_by_key(|c| c.to_string());
        caps
    }

    #[test]
    fn no_profile_needs_no_plan() {
        let spec = Spec::default();
        assert!(spec.linux().as_ref().unwrap().seccomp().is_none());
        let exec = process(serde_json::json!({}));
        assert!(plan(&spec, &exec).unwrap().is_none());
    }

    #[test]
    fn no_new_privs_loads_with_the_process_unchanged() {
        let exec = process(serde_json::json!({
            "noNewPrivileges": true,
            "capabilities": {"permitted": ["CAP_KILL"], "bounding": ["CAP_KILL"]}
        }));
        let plan = plan(&container(errno_profile()), &exec).unwrap().unwrap();
        assert_eq!(plan.executor.privilege, LoadPrivilege::NoNewPrivs);
        assert_eq!(plan.process, exec);
    }

    #[test]
    fn without_no_new_privs_sys_admin_is_kept_permitted_for_the_load() {
        for no_new_privs in [serde_json::json!(false), serde_json::Value::Null] {
            let exec = process(serde_json::json!({
                "noNewPrivileges": no_new_privs,
                "capabilities": {
                    "permitted": ["CAP_KILL"],
                    "effective": ["CAP_KILL"],
                    "bounding": ["CAP_KILL"]
                }
            }));
            let plan = plan(&container(errno_profile()), &exec).unwrap().unwrap();
            assert_eq!(
                plan.executor.privilege,
                LoadPrivilege::SysAdmin { drop_after: true }
            );
            assert_eq!(
                permitted(&plan.process),
                [SpecCapability::Kill, SpecCapability::SysAdmin]
            );
            // Only the permitted set changes: not bounding, not effective.
            let mut expected = exec.clone();
            expected.set_capabilities(plan.process.capabilities().clone());
            assert_eq!(plan.process, expected);
            let caps = plan.process.capabilities().as_ref().unwrap();
            assert_eq!(
                caps.bounding().as_ref().unwrap().iter().collect::<Vec<_>>(),
                [&SpecCapability::Kill]
            );
            assert_eq!(
                caps.effective()
                    .as_ref()
                    .unwrap()
                    .iter()
                    .collect::<Vec<_>>(),
                [&SpecCapability::Kill]
            );
        }
    }

    #[test]
    fn sys_admin_the_spec_permits_stays() {
        let exec = process(serde_json::json!({
            "capabilities": {"permitted": ["CAP_SYS_ADMIN"], "bounding": ["CAP_SYS_ADMIN"]}
        }));
        let plan = plan(&container(errno_profile()), &exec).unwrap().unwrap();
        assert_eq!(
            plan.executor.privilege,
            LoadPrivilege::SysAdmin { drop_after: false }
        );
        assert_eq!(plan.process, exec);
    }

    #[test]
    fn without_a_permitted_set_the_process_keeps_all_it_has() {
        let exec = process(serde_json::json!({}));
        let plan = plan(&container(errno_profile()), &exec).unwrap().unwrap();
        assert_eq!(
            plan.executor.privilege,
            LoadPrivilege::SysAdmin { drop_after: false }
        );
        assert_eq!(plan.process, exec);
    }

    #[test]
    fn a_notifying_profile_is_refused() {
        let profile = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/seccomp-agent.sock",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        });
        let exec = process(serde_json::json!({}));
        let err = plan(&container(profile), &exec).err().unwrap();
        assert!(matches!(err, ExecSeccompError::Notify), "{err}");
    }
}
