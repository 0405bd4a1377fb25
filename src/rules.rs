//! The rule file: TOML -> validated SQL expressions (SPEC §2). This is the
//! only place rules are parsed. A rule's `when` must be one boolean SQL
//! expression over input columns and `value` one numeric expression; both are
//! re-printed from their parsed syntax tree before they reach a query, so
//! the text spliced into SQL is always a single, balanced expression.

use crate::error::{one_line, Error, Result};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::DFSchema;
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::ast::{self as sql_ast, visit_expressions};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::Path;

/// The rules shipped with convmart; `--rules` replaces them.
pub const DEFAULT_RULES: &str = include_str!("../rules/default.toml");
const DEFAULT_RULES_NAME: &str = "<default rules>";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Hard,
    Soft,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hard => "hard",
            Kind::Soft => "soft",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    conversion: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    kind: Option<String>,
    when: Option<String>,
    value: Option<String>,
}

/// One rule after parsing; `when_sql`/`value_sql` are canonical SQL text.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub kind: Kind,
    pub when_sql: String,
    pub value_sql: Option<String>,
}

/// A parsed rule file, not yet checked against an input schema.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Where the rules came from, for messages.
    pub source: String,
    pub rules: Vec<Rule>,
    /// `sha256:<hex>` of the rule file's bytes, recorded in the manifest.
    pub hash: String,
}

impl Rules {
    /// Reads `path`, or the shipped rules when `None`.
    pub fn load(path: Option<&Path>) -> Result<Rules> {
        match path {
            None => Rules::parse(DEFAULT_RULES_NAME, DEFAULT_RULES),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::Rules {
                    file: p.display().to_string(),
                    message: format!("cannot read the rule file: {e}"),
                })?;
                Rules::parse(&p.display().to_string(), &text)
            }
        }
    }

    /// Parses rule-file text: TOML shape, names, kinds and SQL syntax.
    pub fn parse(source: &str, text: &str) -> Result<Rules> {
        let file: RuleFile = toml::from_str(text).map_err(|e| Error::Rules {
            file: source.to_string(),
            message: format!("not a valid rule file: {}", one_line(&e.to_string())),
        })?;
        if file.conversion.is_empty() {
            return Err(Error::Rules {
                file: source.to_string(),
                message: "no [[conversion]] rules found".into(),
            });
        }
        let mut seen = HashSet::new();
        let mut rules = Vec::with_capacity(file.conversion.len());
        for (position, raw) in file.conversion.into_iter().enumerate() {
            let Some(name) = raw.name else {
                return Err(Error::Rules {
                    file: source.to_string(),
                    message: format!("[[conversion]] number {} has no `name`", position + 1),
                });
            };
            let fail = |message: String| Error::Rule {
                file: source.to_string(),
                rule: name.clone(),
                message,
            };
            let kind = raw
                .kind
                .ok_or_else(|| fail("`kind` is missing (\"hard\" or \"soft\")".into()))?;
            let when = raw.when.ok_or_else(|| fail("`when` is missing".into()))?;
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !name_ok {
                return Err(fail("the name must match [a-z0-9_]+".into()));
            }
            if !seen.insert(name.clone()) {
                return Err(fail(
                    "the name is used by an earlier rule; names must be unique".into(),
                ));
            }
            let kind = match kind.as_str() {
                "hard" => Kind::Hard,
                "soft" => Kind::Soft,
                other => {
                    return Err(fail(format!(
                        "kind '{other}' is neither \"hard\" nor \"soft\""
                    )))
                }
            };
            let when_sql = canonical_expr(&when).map_err(|m| fail(format!("`when`: {m}")))?;
            let value_sql = match raw.value.as_deref() {
                None => None,
                Some(v) => Some(canonical_expr(v).map_err(|m| fail(format!("`value`: {m}")))?),
            };
            rules.push(Rule {
                name,
                kind,
                when_sql,
                value_sql,
            });
        }
        let hash = format!("sha256:{:x}", Sha256::digest(text.as_bytes()));
        Ok(Rules {
            source: source.to_string(),
            rules,
            hash,
        })
    }

    /// Checks every expression against the input schema: columns exist,
    /// `when` is boolean, `value` is numeric, no aggregates or windows.
    pub fn check_against(&self, schema: &Schema) -> Result<()> {
        let ctx = SessionContext::new();
        let df_schema =
            DFSchema::try_from(schema.clone()).map_err(|e| Error::internal("rule check", e))?;
        for rule in &self.rules {
            let fail = |message: String| Error::Rule {
                file: self.source.clone(),
                rule: rule.name.clone(),
                message,
            };
            let when = plan_expr(&ctx, &rule.when_sql, &df_schema)
                .map_err(|m| fail(format!("`when`: {m}")))?;
            let when_type = when
                .get_type(&df_schema)
                .map_err(|e| fail(format!("`when`: {}", one_line(&e.to_string()))))?;
            if !matches!(when_type, DataType::Boolean | DataType::Null) {
                return Err(fail(format!(
                    "`when` must be a boolean expression, but `{}` is {when_type}",
                    rule.when_sql
                )));
            }
            if let Some(value_sql) = &rule.value_sql {
                let value = plan_expr(&ctx, value_sql, &df_schema)
                    .map_err(|m| fail(format!("`value`: {m}")))?;
                let value_type = value
                    .get_type(&df_schema)
                    .map_err(|e| fail(format!("`value`: {}", one_line(&e.to_string()))))?;
                if !(value_type.is_numeric() || value_type == DataType::Null) {
                    return Err(fail(format!(
                        "`value` must be numeric, but `{value_sql}` is {value_type}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// SQL for the index (1-based) of the first rule whose `when` holds, NULL if none.
    pub fn rule_index_sql(&self) -> String {
        let mut sql = String::from("CASE");
        for (i, r) in self.rules.iter().enumerate() {
            sql.push_str(&format!(" WHEN ({}) THEN {}", r.when_sql, i + 1));
        }
        sql.push_str(" END");
        sql
    }

    /// SQL for the value of the matched rule, given the column holding the rule index.
    pub fn rule_value_sql(&self, index_column: &str) -> String {
        let value = self.case_on_index(index_column, |r| {
            format!(
                "CAST(({}) AS DOUBLE)",
                r.value_sql.as_deref().unwrap_or("0")
            )
        });
        format!("coalesce({value}, CAST(0 AS DOUBLE))")
    }

    /// SQL for the matched rule's name (NULL when no rule matched).
    pub fn rule_name_sql(&self, index_column: &str) -> String {
        self.case_on_index(index_column, |r| quote(&r.name))
    }

    /// SQL for the matched rule's kind, 'hard' or 'soft' (NULL when no rule matched).
    pub fn rule_kind_sql(&self, index_column: &str) -> String {
        self.case_on_index(index_column, |r| quote(r.kind.as_str()))
    }

    // `CASE index WHEN 1 THEN <of rule 1> ... END`: what a join with a rule
    // table would give, as one integer comparison per row and without the
    // copy of the wide rows that a join makes.
    fn case_on_index(&self, index_column: &str, then: impl Fn(&Rule) -> String) -> String {
        let mut sql = format!("CASE {index_column}");
        for (i, r) in self.rules.iter().enumerate() {
            sql.push_str(&format!(" WHEN {} THEN {}", i + 1, then(r)));
        }
        sql.push_str(" END");
        sql
    }
}

/// A SQL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Parses one SQL expression and prints it back. Rejects trailing text,
/// `;`, aliases and sub-queries.
fn canonical_expr(text: &str) -> std::result::Result<String, String> {
    if text.trim().is_empty() {
        return Err("the expression is empty".into());
    }
    let parsed = DFParser::parse_sql_into_expr(text).map_err(|e| {
        let msg = one_line(&e.to_string());
        if text.contains(';') {
            format!("must be a single SQL expression (no ';', no further statements): {msg}")
        } else {
            format!("not a valid SQL expression: {msg}")
        }
    })?;
    if parsed.alias.is_some() {
        return Err("must be a plain expression without an alias (AS ...)".into());
    }
    let has_subquery = visit_expressions(&parsed.expr, |e| match e {
        sql_ast::Expr::Subquery(_)
        | sql_ast::Expr::Exists { .. }
        | sql_ast::Expr::InSubquery { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break();
    if has_subquery {
        return Err("must not contain a sub-query (SELECT ...)".into());
    }
    Ok(parsed.expr.to_string())
}

fn plan_expr(
    ctx: &SessionContext,
    sql: &str,
    schema: &DFSchema,
) -> std::result::Result<Expr, String> {
    let expr = ctx
        .parse_sql_expr(sql, schema)
        .map_err(|e| one_line(&e.strip_backtrace().to_string()))?;
    let per_row = !expr
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::AggregateFunction(_) | Expr::WindowFunction(_)
            ))
        })
        .unwrap_or(false);
    if !per_row {
        return Err(format!(
            "`{sql}` uses an aggregate or window function; rules see one event at a time"
        ));
    }
    Ok(expr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::spec_schema;

    fn rule_error(toml_text: &str) -> String {
        let rules = Rules::parse("t.toml", toml_text);
        match rules.and_then(|r| r.check_against(&spec_schema())) {
            Ok(()) => panic!("expected an error"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{e}");
                e.to_string()
            }
        }
    }

    fn one(name: &str, kind: &str, when: &str) -> String {
        format!("[[conversion]]\nname = \"{name}\"\nkind = \"{kind}\"\nwhen = \"{when}\"\n")
    }

    #[test]
    fn shipped_rules_match_spec_and_check_against_spec_schema() {
        let rules = Rules::load(None).unwrap();
        let names: Vec<_> = rules
            .rules
            .iter()
            .map(|r| (r.name.as_str(), r.kind))
            .collect();
        assert_eq!(
            names,
            vec![
                ("purchase", Kind::Hard),
                ("demo_request", Kind::Hard),
                ("phone_call", Kind::Hard),
                ("email_signup", Kind::Soft),
                ("social_engagement", Kind::Soft),
                ("product_affinity", Kind::Soft),
            ]
        );
        rules.check_against(&spec_schema()).unwrap();
    }

    #[test]
    fn unknown_column_names_the_rule_and_column() {
        let e = rule_error(&one("x", "hard", "no_such_col = 1"));
        assert!(e.contains("rule 'x'") && e.contains("no_such_col"), "{e}");
    }

    #[test]
    fn semicolon_and_second_statement_are_rejected() {
        let e = rule_error(&one("x", "hard", "event_type = 'a'; DROP TABLE t"));
        assert!(
            e.contains("rule 'x'") && e.contains("single SQL expression"),
            "{e}"
        );
    }

    #[test]
    fn sub_queries_are_rejected() {
        let e = rule_error(&one("x", "hard", "event_id IN (SELECT 1)"));
        assert!(e.contains("sub-query"), "{e}");
    }

    #[test]
    fn non_boolean_when_is_rejected() {
        let e = rule_error(&one("x", "hard", "revenue + 1"));
        assert!(e.contains("must be a boolean"), "{e}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let text = format!("{}{}", one("x", "hard", "true"), one("x", "soft", "true"));
        let e = rule_error(&text);
        assert!(e.contains("rule 'x'") && e.contains("unique"), "{e}");
    }

    #[test]
    fn missing_fields_name_the_rule() {
        let e = rule_error("[[conversion]]\nname = \"no_when\"\nkind = \"hard\"\n");
        assert!(
            e.contains("rule 'no_when'") && e.contains("`when` is missing"),
            "{e}"
        );
        let e = rule_error("[[conversion]]\nkind = \"hard\"\nwhen = \"true\"\n");
        assert!(e.contains("number 1 has no `name`"), "{e}");
    }

    #[test]
    fn unknown_kind_and_bad_name_are_rejected() {
        assert!(rule_error(&one("x", "medium", "true")).contains("neither"));
        assert!(rule_error(&one("Bad-Name", "hard", "true")).contains("[a-z0-9_]+"));
    }

    #[test]
    fn syntax_errors_and_bad_toml_are_rejected() {
        assert!(
            rule_error(&one("x", "hard", "event_type = ")).contains("not a valid SQL expression")
        );
        assert!(rule_error("[[conversion]\nname=").contains("not a valid rule file"));
    }

    #[test]
    fn aggregates_and_non_numeric_values_are_rejected() {
        assert!(rule_error(&one("x", "hard", "count(*) > 1")).contains("aggregate"));
        let text = format!("{}value = \"event_type\"\n", one("x", "hard", "true"));
        assert!(rule_error(&text).contains("must be numeric"));
    }

    #[test]
    fn expressions_are_reprinted_as_single_balanced_sql() {
        let rules = Rules::parse(
            "t",
            &one("x", "hard", "event_type = 'a' OR (country = 'DE')"),
        )
        .unwrap();
        assert_eq!(
            rules.rule_index_sql(),
            "CASE WHEN (event_type = 'a' OR (country = 'DE')) THEN 1 END"
        );
    }
}
