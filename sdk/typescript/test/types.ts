// Compile-time checks of the client's types (`npm run typecheck`, part of
// `npm test`): every named shape is a real type read from the document —
// not `any`, `unknown` or `never`, which is what a type helper gives when a
// regenerated document no longer has the shape it looks for — and bodies
// the document rejects do not compile.

import type * as T from "../src/index.js";
import type { Hangar } from "../src/index.js";

type IsAny<X> = 0 extends 1 & X ? true : false;
type IsNever<X> = [X] extends [never] ? true : false;
type IsUnknown<X> = unknown extends X ? true : false;
type Precise<X> = IsAny<X> extends true ? false : IsNever<X> extends true ? false : IsUnknown<X> extends true ? false : true;

const precise: { [K in keyof Shapes]: Precise<Shapes[K]> } = {
  Agent: true, CreateAgent: true, UpdateAgent: true, AgentMetrics: true, Source: true, Build: true,
  BuildLog: true, BuildLogLine: true, Instance: true, InstanceStatus: true, CreateInstance: true,
  UpdateInstance: true, Job: true, Upload: true, UploadReceived: true, Secret: true, Webhook: true,
  CreateWebhook: true, UpdateWebhook: true, Delivery: true, ApiKey: true, Organization: true,
  CreatedOrganization: true, User: true, Cloud: true, Node: true, Event: true, StreamToken: true,
  Me: true, Deleted: true, Pagination: true,
};

interface Shapes {
  Agent: T.Agent; CreateAgent: T.CreateAgent; UpdateAgent: T.UpdateAgent; AgentMetrics: T.AgentMetrics;
  Source: T.Source; Build: T.Build; BuildLog: T.BuildLog; BuildLogLine: T.BuildLogLine; Instance: T.Instance;
  InstanceStatus: T.InstanceStatus; CreateInstance: T.CreateInstance; UpdateInstance: T.UpdateInstance;
  Job: T.Job; Upload: T.Upload; UploadReceived: T.UploadReceived; Secret: T.Secret; Webhook: T.Webhook;
  CreateWebhook: T.CreateWebhook; UpdateWebhook: T.UpdateWebhook; Delivery: T.Delivery; ApiKey: T.ApiKey;
  Organization: T.Organization; CreatedOrganization: T.CreatedOrganization; User: T.User; Cloud: T.Cloud;
  Node: T.Node; Event: T.Event; StreamToken: T.StreamToken; Me: T.Me; Deleted: T.Deleted; Pagination: T.Pagination;
}

export async function usage(hangar: Hangar): Promise<unknown[]> {
  const agent = await hangar.agents.get("agent_x");
  const name: string = agent.name;
  const page = await hangar.agents.list({ limit: 10 });
  const first: T.Agent | undefined = page.data[0];
  const job: T.Job = await hangar.jobs.wait("job_x");
  const key: string | null | undefined = (await hangar.apiKeys.create({ name: "k" })).key;
  const me: string = (await hangar.me()).organization_id;
  const url: string = await hangar.builds.logStreamUrl("build_x");
  // @ts-expect-error: a secret needs its value
  await hangar.secrets.put({ name: "X" });
  // @ts-expect-error: an agent has no such field
  await hangar.agents.create({ name: "a", cloud_id: "local", source: { type: "github", repo: "o/r" }, colour: "red" });
  // @ts-expect-error: exec takes argv, a list of strings
  await hangar.instances.exec("org_x", "inst_x", "ls -l");
  for await (const event of hangar.agents.stream("agent_x", {})) {
    if (event.type === "chunk") return [event.content];
  }
  return [precise, name, first, job, key, me, url];
}
