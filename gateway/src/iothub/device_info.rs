//! The device information component ADU's model includes (`deviceInformation`,
//! dtmi:azure:DeviceManagement:DeviceInformation;1), read from the machine the way ADU's Linux
//! platform layer reads it (src/platform_layers/linux_platform_layer/src/
//! linux_device_info_exports.cpp): `osName` and `swVersion` from /etc/os-release `NAME` and
//! `VERSION` (else uname), `processorArchitecture` from uname, `processorManufacturer` the CPU's
//! vendor id, `totalMemory` and `totalStorage` (of `/`) in kilobytes. A value that cannot be
//! read is left out, as ADU's agent leaves it out.

use super::component::{component_patch, DEVICE_INFORMATION};
use serde_json::{Map, Value};

/// The `deviceInformation` reported patch for a device of `manufacturer` and `model`.
pub fn device_information(manufacturer: Option<&str>, model: Option<&str>) -> Value {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let uname = rustix::system::uname();
    let text = |s: &std::ffi::CStr| s.to_string_lossy().into_owned();
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            m.insert(k.into(), Value::from(v));
        }
    };
    put("manufacturer", manufacturer.map(str::to_owned));
    put("model", model.map(str::to_owned));
    put(
        "osName",
        os_release_value(&os_release, "NAME").or_else(|| Some(text(uname.sysname()))),
    );
    put(
        "swVersion",
        os_release_value(&os_release, "VERSION").or_else(|| Some(text(uname.release()))),
    );
    put("processorArchitecture", Some(text(uname.machine())));
    put("processorManufacturer", cpu_vendor());
    if let Some(kb) = total_memory_kb() {
        m.insert("totalMemory".into(), Value::from(kb));
    }
    if let Ok(s) = rustix::fs::statvfs("/") {
        m.insert(
            "totalStorage".into(),
            Value::from(s.f_blocks.saturating_mul(s.f_frsize) / 1024),
        );
    }
    component_patch(DEVICE_INFORMATION, m)
}

/// `KEY=value` or `KEY="value"` from an os-release file.
fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim().trim_matches('"').to_owned())
    })
}

/// The CPU's vendor (`vendor_id` on x86, `CPU implementer` elsewhere), as lscpu shows it.
fn cpu_vendor() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        matches!(k.trim(), "vendor_id" | "CPU implementer").then(|| v.trim().to_owned())
    })
}

fn total_memory_kb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    info.lines().find_map(|l| {
        l.strip_prefix("MemTotal:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_read_with_or_without_quotes() {
        let text =
            "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            os_release_value(text, "NAME").as_deref(),
            Some("Debian GNU/Linux")
        );
        assert_eq!(
            os_release_value(text, "VERSION").as_deref(),
            Some("12 (bookworm)")
        );
        assert_eq!(os_release_value(text, "ID").as_deref(), Some("debian"));
    }

    #[test]
    fn this_machine_reports_its_architecture_memory_and_storage() {
        let v = device_information(Some("contoso"), None);
        let d = &v["deviceInformation"];
        assert_eq!(d["__t"], "c");
        assert_eq!(d["manufacturer"], "contoso");
        assert!(d.get("model").is_none(), "{v}");
        assert_eq!(d["processorArchitecture"], std::env::consts::ARCH);
        assert!(d["totalMemory"].as_u64().unwrap() > 0, "{v}");
        assert!(d["totalStorage"].as_u64().unwrap() > 0, "{v}");
    }
}
