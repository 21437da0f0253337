//! A job row's state (`apalis.jobs.status`), in apalis-postgres' words.

use std::{fmt, str::FromStr};

use sqlx::{
    Decode, Encode, Postgres, Type,
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef},
};

/// Where a job is. `Pending` rows wait (due, or scheduled when `run_at` is in the future — retries and snoozes
/// included) → `Running` → `Done`; `Failed` means dead (never picked up again until an operator retries it);
/// `Killed` means cancelled by an operator. `Queued` is apalis' own prefetched state: this runtime never writes
/// it and treats it as running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Pending,
    Queued,
    Running,
    Done,
    Failed,
    Killed,
}

impl JobState {
    pub const ALL: &'static [Self] = &[
        Self::Pending,
        Self::Queued,
        Self::Running,
        Self::Done,
        Self::Failed,
        Self::Killed,
    ];

    /// The stored word.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Queued => "Queued",
            Self::Running => "Running",
            Self::Done => "Done",
            Self::Failed => "Failed",
            Self::Killed => "Killed",
        }
    }

    /// Whether the job will not run again unless an operator retries it.
    pub fn is_final(self) -> bool {
        match self {
            Self::Done | Self::Failed | Self::Killed => true,
            Self::Pending | Self::Queued | Self::Running => false,
        }
    }
}

/// A stored state this runtime does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState(pub String);

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a job state", self.0)
    }
}

impl std::error::Error for UnknownState {}

impl FromStr for JobState {
    type Err = UnknownState;
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|state| state.as_str() == word)
            .ok_or_else(|| UnknownState(word.to_owned()))
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Type<Postgres> for JobState {
    fn type_info() -> PgTypeInfo {
        <str as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <str as Type<Postgres>>::compatible(ty)
    }
}

impl PgHasArrayType for JobState {
    fn array_type_info() -> PgTypeInfo {
        <&str as PgHasArrayType>::array_type_info()
    }
}

impl<'q> Encode<'q, Postgres> for JobState {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&str as Encode<'q, Postgres>>::encode(self.as_str(), buf)
    }
}

impl<'r> Decode<'r, Postgres> for JobState {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(<&str as Decode<'r, Postgres>>::decode(value)?.parse()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_reads_back_as_itself_and_unknown_words_are_refused() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(*state));
        }
        assert_eq!("Lost".parse::<JobState>(), Err(UnknownState("Lost".into())));
    }
}
