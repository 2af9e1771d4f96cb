//! The protocol phases of one message: the single list of them in the workspace.
//! `loadgen` times and classifies by [`Phase`]; result files key `phases_ms` and
//! `histograms.phases` by its names ([`PHASES`]).

/// A protocol phase of one SMTP message, in protocol order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Connect,
    Banner,
    Ehlo,
    /// From sending STARTTLS (or, with implicit TLS, from the connect) to the
    /// finished handshake.
    Tls,
    /// From sending AUTH to its final reply.
    Auth,
    Mail,
    Rcpt,
    Data,
    /// From the first body byte to the reply after the final dot.
    Eod,
    Quit,
}

impl Phase {
    /// Every phase, in protocol order.
    pub const ALL: [Phase; 10] = [
        Phase::Connect,
        Phase::Banner,
        Phase::Ehlo,
        Phase::Tls,
        Phase::Auth,
        Phase::Mail,
        Phase::Rcpt,
        Phase::Data,
        Phase::Eod,
        Phase::Quit,
    ];
    pub const COUNT: usize = Phase::ALL.len();

    /// The name used in result files (`phases_ms`, failure keys).
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Banner => "banner",
            Phase::Ehlo => "ehlo",
            Phase::Tls => "tls",
            Phase::Auth => "auth",
            Phase::Mail => "mail",
            Phase::Rcpt => "rcpt",
            Phase::Data => "data",
            Phase::Eod => "eod",
            Phase::Quit => "quit",
        }
    }

    /// The position in [`Phase::ALL`], for arrays indexed by phase.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// True for the phases only some sessions have (`tls`, `auth`): a run without
    /// TLS or AUTH leaves them out of its result rather than report empty rows.
    pub const fn is_optional(self) -> bool {
        matches!(self, Phase::Tls | Phase::Auth)
    }

    /// The phase after this one, if any.
    pub const fn next(self) -> Option<Phase> {
        let i = self.index() + 1;
        if i < Phase::COUNT {
            Some(Phase::ALL[i])
        } else {
            None
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names of the per-message phases, in protocol order (keys of `phases_ms`).
pub const PHASES: [&str; Phase::COUNT] = {
    let mut names = [""; Phase::COUNT];
    let mut i = 0;
    while i < Phase::COUNT {
        names[i] = Phase::ALL[i].as_str();
        i += 1;
    }
    names
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_listed_once_in_protocol_order() {
        assert_eq!(
            PHASES,
            [
                "connect", "banner", "ehlo", "tls", "auth", "mail", "rcpt", "data", "eod", "quit"
            ]
        );
        for (i, p) in Phase::ALL.iter().enumerate() {
            assert_eq!(p.index(), i);
            assert_eq!(p.to_string(), PHASES[i]);
        }
        assert_eq!(Phase::Mail.next(), Some(Phase::Rcpt));
        assert_eq!(Phase::Quit.next(), None);
    }
}
