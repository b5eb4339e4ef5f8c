//! Progress reporting without a terminal dependency: the pipeline emits [`Event`]s and the caller
//! draws them (the `gptq` command uses progress bars).

/// Something worth telling the user while a long run goes on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stage starts with `total` steps.
    Stage {
        /// What the stage does.
        name: String,
        /// Steps it will take.
        total: u64,
    },
    /// Steps of the current stage are done.
    Advance(u64),
    /// What is being worked on now, within the stage.
    Message(String),
    /// Something the user should know about the result.
    Warning(String),
    /// The current stage is over.
    StageDone,
}

/// Receives [`Event`]s.
pub trait Progress {
    /// Handles one event.
    fn event(&mut self, event: Event);
}

impl<F: FnMut(Event)> Progress for F {
    fn event(&mut self, event: Event) {
        self(event)
    }
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn event(&mut self, _: Event) {}
}
