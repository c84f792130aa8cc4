/**
 * The typed task RPCs, found from the generated descriptors: every unary method that carries
 * the `taskgateway.v1.route` option, keyed by its request message's type, so that `submit`
 * finds `images.v1.ImagesService/Generate` from an `images.v1.GenerateRequest`.
 */
import {
  type DescMethodUnary,
  type DescService,
  type MessageShape,
  hasOption,
} from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { ImagesService } from "./gen/images/v1/images_pb.js";
import { route } from "./gen/taskgateway/v1/options_pb.js";
import { VideosService } from "./gen/videos/v1/videos_pb.js";

/** The services whose RPCs are tasks, one per domain: a new domain's service is added here. */
const TASK_SERVICES = [ImagesService, VideosService] as const;

type MethodsOf<S> = S extends GenService<infer M extends GenServiceMethods> ? M[keyof M] : never;
type TaskMethodShape = MethodsOf<(typeof TASK_SERVICES)[number]>;

/** A typed task request: `images.v1.GenerateRequest`, `videos.v1.AnimateRequest`, ... */
export type TaskRequest = MessageShape<TaskMethodShape["input"]>;

/** A task RPC: its request carries an idempotency key, its response a `task_key`. */
export type TaskMethod = DescMethodUnary;

const BY_REQUEST_TYPE: ReadonlyMap<string, TaskMethod> = new Map(
  (TASK_SERVICES as readonly DescService[])
    .flatMap((service) => service.methods)
    .filter(
      (method): method is TaskMethod => method.methodKind === "unary" && hasOption(method, route),
    )
    .filter((method) => method.output.fields.some((field) => field.name === "task_key"))
    .map((method) => [method.input.typeName, method]),
);

/** The RPC that takes this request, or a TypeError that names the known request types. */
export function taskMethod(request: { $typeName: string }): TaskMethod {
  const method = BY_REQUEST_TYPE.get(request?.$typeName);
  if (method === undefined) {
    const known = [...BY_REQUEST_TYPE.keys()].sort().join(", ");
    throw new TypeError(
      `submit: ${String(request?.$typeName ?? request)} is not a task request; ` +
        `expected a message created with create() from one of: ${known}`,
    );
  }
  return method;
}
