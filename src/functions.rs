//! SQL functions convmart adds to DataFusion. Every session that plans or runs
//! convmart's queries registers them: the embedded engine, and on Ballista the
//! client, the scheduler and every executor.

use datafusion::arrow::array::{Array, ArrayRef, StringArray, UInt64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use std::sync::Arc;
use twox_hash::XxHash64;

/// All of them, for registries that are not a `SessionContext`.
pub fn all() -> Vec<Arc<ScalarUDF>> {
    vec![Arc::new(ScalarUDF::from(Hash64::new()))]
}

/// Makes them callable in `ctx`'s SQL.
pub fn register(ctx: &SessionContext) {
    for f in all() {
        ctx.register_udf(f.as_ref().clone());
    }
}

/// `hash64(text) -> UInt64`: a fixed-seed 64-bit hash (xxHash64) of a string,
/// NULL for NULL. The same in every process, so Ballista executors agree.
///
/// Only ever a pre-filter: grouping and joining on 8-byte integers is several
/// times faster than on strings, and a collision can only let an extra row
/// through to a later step that compares the real strings. It never decides
/// a result on its own.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Hash64 {
    signature: Signature,
}

impl Hash64 {
    fn new() -> Self {
        Self {
            signature: Signature::uniform(1, vec![DataType::Utf8], Volatility::Immutable),
        }
    }
}

const SEED: u64 = 0x636f_6e76_6d61_7274; // "convmart"

fn hash(text: &str) -> u64 {
    XxHash64::oneshot(SEED, text.as_bytes())
}

impl ScalarUDFImpl for Hash64 {
    fn name(&self) -> &str {
        "hash64"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("hash64 takes one argument");
        };
        match arg {
            ColumnarValue::Scalar(ScalarValue::Utf8(v)) => Ok(ColumnarValue::Scalar(
                ScalarValue::UInt64(v.as_deref().map(hash)),
            )),
            ColumnarValue::Array(array) => {
                let Some(strings) = array.as_any().downcast_ref::<StringArray>() else {
                    return exec_err!("hash64 expects text, got {}", array.data_type());
                };
                let hashes: UInt64Array = strings.iter().map(|v| v.map(hash)).collect();
                Ok(ColumnarValue::Array(Arc::new(hashes) as ArrayRef))
            }
            other => exec_err!("hash64 expects text, got {}", other.data_type()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash64_is_stable_and_null_preserving() {
        // Pinned: every process of a Ballista cluster must compute the same value.
        assert_eq!(hash("evt-1"), hash("evt-1"));
        assert_ne!(hash("evt-1"), hash("evt-2"));
        assert_eq!(hash(""), XxHash64::oneshot(SEED, b""));
        let f = Hash64::new();
        let input = Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef;
        let out = f
            .invoke_with_args(ScalarFunctionArgs {
                args: vec![ColumnarValue::Array(input)],
                arg_fields: vec![],
                number_rows: 2,
                return_field: Arc::new(datafusion::arrow::datatypes::Field::new(
                    "h",
                    DataType::UInt64,
                    true,
                )),
                config_options: Default::default(),
            })
            .unwrap();
        let ColumnarValue::Array(out) = out else {
            panic!("expected an array")
        };
        let out = out.as_any().downcast_ref::<UInt64Array>().unwrap();
        assert_eq!(out.value(0), hash("a"));
        assert!(out.is_null(1));
    }
}
