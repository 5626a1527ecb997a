//! Compute resources: one type under both APIs.
//!
//! The Instances API speaks Kubernetes quantities (`"cpu": "0.5"`,
//! `"memory": "512Mi"`, `cpu_limit`, `memory_limit`); the Agents API speaks numbers
//! (`"cpu": 1`, `"memory_mb": 2048`, `"gpu": null`). [`ResourcesInput`] reads either
//! spelling, [`Resources`] keeps millicores and bytes, and the two render methods
//! give each API its own spelling back.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::quantity::{format_bytes, format_cpu_millis, parse_bytes, parse_cpu_millis};
use crate::Invalid;

const MIB: u64 = 1 << 20;
/// Smallest CPU request, in millicores.
pub const MIN_CPU_MILLIS: u64 = 1;
/// Largest CPU request or limit, in millicores (64 cores).
pub const MAX_CPU_MILLIS: u64 = 64_000;
/// Smallest memory request (16 MiB: less cannot start a Python interpreter).
pub const MIN_MEMORY_BYTES: u64 = 16 * MIB;
/// Largest memory request or limit (1 TiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;

/// Resources as Hangar keeps them: millicores and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU request (weight), millicores.
    pub cpu_millis: u64,
    /// Memory request, bytes.
    pub memory_bytes: u64,
    /// CPU hard limit (CFS quota), millicores.
    pub cpu_limit_millis: Option<u64>,
    /// Memory hard limit, bytes.
    pub memory_limit_bytes: Option<u64>,
    /// GPUs requested.
    pub gpu: Option<u32>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu_millis: 500,
            memory_bytes: 512 * MIB,
            cpu_limit_millis: None,
            memory_limit_bytes: None,
            gpu: None,
        }
    }
}

/// A CPU amount as a number of cores (`1`, `0.5`) or a quantity string (`"250m"`).
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CpuAmount {
    /// Cores as a number.
    Cores(f64),
    /// A quantity string.
    Quantity(String),
}

/// A memory amount as a number of bytes or a quantity string (`"512Mi"`).
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MemoryAmount {
    /// Bytes as a number.
    Bytes(u64),
    /// A quantity string.
    Quantity(String),
}

/// A quantity string as [`crate::quantity`] reads it: digits with an
/// optional fraction and one of its suffixes.
const QUANTITY_PATTERN: &str = r"^([0-9]+|[0-9]*\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$";

/// A CPU amount as the document shows it: cores as a number, or a quantity
/// string (which must come to 0.001–64 cores).
fn cpu_amount() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .exclusive_minimum(Some(0))
                .maximum(Some(MAX_CPU_MILLIS / 1000)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(QUANTITY_PATTERN)),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "Cores as a number (`0.5`) or a quantity (`\"250m\"`), 0.001–64 cores.",
        ))
        .build()
        .into()
}

/// A memory amount as the document shows it: bytes as an integer, or a
/// quantity string (which must come to 16Mi–1Ti).
fn memory_amount() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(MIN_MEMORY_BYTES))
                .maximum(Some(MAX_MEMORY_BYTES)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(QUANTITY_PATTERN)),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "Bytes as an integer or a quantity (`\"512Mi\"`), 16Mi–1Ti.",
        ))
        .build()
        .into()
}

/// Resources as a request gives them, in either API's spelling. Absent fields keep
/// their current (or default) value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesInput {
    /// CPU request: cores (`1`, `0.5`) or a quantity (`"0.5"`, `"250m"`).
    #[schema(schema_with = cpu_amount)]
    pub cpu: Option<CpuAmount>,
    /// Memory request as a quantity (`"512Mi"`) or bytes.
    #[schema(schema_with = memory_amount)]
    pub memory: Option<MemoryAmount>,
    /// Memory request in MiB (Agents API spelling).
    #[schema(minimum = 16, maximum = 1_048_576)]
    pub memory_mb: Option<u64>,
    /// CPU hard limit: cores or a quantity.
    #[schema(schema_with = cpu_amount)]
    pub cpu_limit: Option<CpuAmount>,
    /// Memory hard limit: a quantity or bytes.
    #[schema(schema_with = memory_amount)]
    pub memory_limit: Option<MemoryAmount>,
    /// GPUs; `null` or `0` for none.
    pub gpu: Option<u32>,
}

fn cpu_millis(field: &str, amount: &CpuAmount) -> Result<u64, Invalid> {
    let millis = match amount {
        CpuAmount::Cores(cores) => {
            if !cores.is_finite() || *cores <= 0.0 {
                return Err(Invalid::new(field, "must be a positive number of cores"));
            }
            let millis = (cores * 1000.0).ceil();
            if millis > MAX_CPU_MILLIS as f64 {
                MAX_CPU_MILLIS + 1
            } else {
                // In range, so the conversion is exact.
                millis as u64
            }
        }
        CpuAmount::Quantity(s) => {
            parse_cpu_millis(s).map_err(|e| Invalid::new(field, e.to_string()))?
        }
    };
    if !(MIN_CPU_MILLIS..=MAX_CPU_MILLIS).contains(&millis) {
        return Err(Invalid::new(field, "must be between 0.001 and 64 cores"));
    }
    Ok(millis)
}

fn memory_bytes(field: &str, amount: &MemoryAmount) -> Result<u64, Invalid> {
    let bytes = match amount {
        MemoryAmount::Bytes(b) => *b,
        MemoryAmount::Quantity(s) => {
            parse_bytes(s).map_err(|e| Invalid::new(field, e.to_string()))?
        }
    };
    if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&bytes) {
        return Err(Invalid::new(field, "must be between 16Mi and 1Ti"));
    }
    Ok(bytes)
}

impl ResourcesInput {
    /// `base` with this input laid over it, validated as a whole.
    pub fn apply(&self, base: Resources) -> Result<Resources, Invalid> {
        let mut r = base;
        if let Some(cpu) = &self.cpu {
            r.cpu_millis = cpu_millis("cpu", cpu)?;
        }
        match (&self.memory, self.memory_mb) {
            (Some(_), Some(_)) => {
                return Err(Invalid::new(
                    "memory_mb",
                    "give either memory or memory_mb, not both",
                ))
            }
            (Some(m), None) => r.memory_bytes = memory_bytes("memory", m)?,
            (None, Some(mb)) => {
                r.memory_bytes =
                    memory_bytes("memory_mb", &MemoryAmount::Bytes(mb.saturating_mul(MIB)))?;
            }
            (None, None) => {}
        }
        if let Some(limit) = &self.cpu_limit {
            r.cpu_limit_millis = Some(cpu_millis("cpu_limit", limit)?);
        }
        if let Some(limit) = &self.memory_limit {
            r.memory_limit_bytes = Some(memory_bytes("memory_limit", limit)?);
        }
        if let Some(gpu) = self.gpu {
            if gpu > 0 {
                return Err(Invalid::new("gpu", "GPUs are not available on this cloud"));
            }
            r.gpu = None;
        }
        if let Some(limit) = r.cpu_limit_millis {
            if limit < r.cpu_millis {
                return Err(Invalid::new("cpu_limit", "must be at least cpu"));
            }
        }
        if let Some(limit) = r.memory_limit_bytes {
            if limit < r.memory_bytes {
                return Err(Invalid::new("memory_limit", "must be at least memory"));
            }
        }
        Ok(r)
    }
}

/// Resources in the Instances API's spelling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct InstanceResources {
    /// CPU request, e.g. `"0.5"`.
    pub cpu: String,
    /// Memory request, e.g. `"512Mi"`.
    pub memory: String,
    /// CPU limit, e.g. `"1.0"`, or null for none.
    pub cpu_limit: Option<String>,
    /// Memory limit, e.g. `"1Gi"`, or null for none.
    pub memory_limit: Option<String>,
}

/// Resources in the Agents API's spelling.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AgentResources {
    /// Cores, e.g. `1` or `0.5`.
    #[schema(value_type = f64)]
    pub cpu: serde_json::Number,
    /// Memory in MiB (rounded up).
    pub memory_mb: u64,
    /// GPUs, or null.
    pub gpu: Option<u32>,
}

impl Resources {
    /// The Instances API's spelling.
    #[must_use]
    pub fn to_instance_api(&self) -> InstanceResources {
        InstanceResources {
            cpu: format_cpu_millis(self.cpu_millis),
            memory: format_bytes(self.memory_bytes),
            cpu_limit: self.cpu_limit_millis.map(format_cpu_millis),
            memory_limit: self.memory_limit_bytes.map(format_bytes),
        }
    }

    /// The Agents API's spelling.
    #[must_use]
    pub fn to_agent_api(&self) -> AgentResources {
        let cpu = if self.cpu_millis.is_multiple_of(1000) {
            serde_json::Number::from(self.cpu_millis / 1000)
        } else {
            // Millicores below 64 000 are exact in an f64.
            serde_json::Number::from_f64(self.cpu_millis as f64 / 1000.0)
                .unwrap_or_else(|| serde_json::Number::from(0))
        };
        AgentResources {
            cpu,
            memory_mb: self.memory_bytes.div_ceil(MIB),
            gpu: self.gpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> ResourcesInput {
        serde_json::from_str(json).expect("valid input json")
    }

    #[test]
    fn reads_instances_spelling() {
        let r = input(r#"{"cpu":"0.5","memory":"512Mi","cpu_limit":"1.0","memory_limit":"1Gi"}"#)
            .apply(Resources::default())
            .expect("valid");
        assert_eq!(r.cpu_millis, 500);
        assert_eq!(r.memory_limit_bytes, Some(1 << 30));
        let shown = r.to_instance_api();
        assert_eq!(shown.cpu, "0.5");
        assert_eq!(shown.cpu_limit.as_deref(), Some("1.0"));
        assert_eq!(shown.memory, "512Mi");
        assert_eq!(shown.memory_limit.as_deref(), Some("1Gi"));
    }

    #[test]
    fn reads_agents_spelling() {
        let r = input(r#"{"cpu":2,"memory_mb":4096,"gpu":null}"#)
            .apply(Resources::default())
            .expect("valid");
        assert_eq!(r.cpu_millis, 2000);
        assert_eq!(r.memory_bytes, 4096 * MIB);
        let shown = serde_json::to_value(r.to_agent_api()).expect("serializes");
        assert_eq!(
            shown,
            serde_json::json!({"cpu": 2, "memory_mb": 4096, "gpu": null})
        );
        let half = input(r#"{"cpu":0.5}"#).apply(r).expect("valid");
        assert_eq!(
            serde_json::to_value(half.to_agent_api()).expect("serializes")["cpu"],
            serde_json::json!(0.5)
        );
    }

    #[test]
    fn rejects_bad_values_naming_the_field() {
        let cases = [
            (r#"{"cpu":"-1"}"#, "cpu"),
            (r#"{"cpu":0}"#, "cpu"),
            (r#"{"cpu":65}"#, "cpu"),
            (r#"{"memory":"12Zi"}"#, "memory"),
            (r#"{"memory":""}"#, "memory"),
            (r#"{"memory":"1Mi"}"#, "memory"),
            (r#"{"memory":"1Gi","memory_mb":1024}"#, "memory_mb"),
            (r#"{"cpu":"2","cpu_limit":"1"}"#, "cpu_limit"),
            (r#"{"memory":"2Gi","memory_limit":"1Gi"}"#, "memory_limit"),
            (r#"{"gpu":1}"#, "gpu"),
        ];
        for (json, field) in cases {
            let err = input(json).apply(Resources::default()).expect_err(json);
            assert_eq!(err.field, field, "{json}");
        }
        assert!(serde_json::from_str::<ResourcesInput>(r#"{"cpus":1}"#).is_err());
    }
}
