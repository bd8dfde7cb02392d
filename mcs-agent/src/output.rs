//! How `plan` and `inspect` print what they found.

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// JSON, with the documented field names.
    Json,
    /// Tables for people.
    Table,
}

impl OutputFormat {
    /// Every format.
    pub const ALL: [Self; 2] = [Self::Json, Self::Table];

    /// The name on the command line: `json` or `table`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Table => "table",
        }
    }

    /// The format named `name`, if any.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }
}
