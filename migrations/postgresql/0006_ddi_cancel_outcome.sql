-- How a DDI device answered a cancellation: 1 it stopped, 0 it could not (rejected, or closed with failure),
-- NULL not answered. A device that could not stop may still close the deployment with success.
ALTER TABLE ddi_action_state ADD COLUMN cancel_stopped bigint;
